"""Metering while Redis fails: the ledger's health, the deferred-charge bound and the replay.

The request path consults ``Metering`` before and after it calls the ledger:

- ``up`` is False from the first Redis call that failed with a timeout or a connection error
  until a probe (PING every ``PROBE_INTERVAL_S``) succeeds. While it is False the request
  path does not call Redis at all, so no request waits for a dead server. A call that found
  no free connection (kind ``busy``) or that Redis rejected leaves ``up`` as it is.
- ``defer_charge`` journals the charge of a ``fail_open`` request, bounded per pool and per
  process by ``ledger.max_deferred_tickets``.
- ``later`` journals a refund or settlement that could not reach Redis, and the refund of a
  charge whose outcome is unknown (timed out after it was sent, or abandoned by a client
  that disconnected).

A background task replays journal entries into Redis whenever Redis answers, oldest first.
Charges carry their original id and the ledger's charge script is idempotent per id, so an
entry replayed twice (after a crash between the call and its done marker) charges once.
A deferred charge is replayed as a ``deferred`` ledger charge, which is never refused: what
the pool cannot pay becomes its debt. Only a charge whose candidate pools do not exist
stays unpaid (``deferred_charge_unpaid``).
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import structlog
from aiohttp import web

from gatekeeper import metrics
from gatekeeper.errors import LedgerUnavailable
from gatekeeper.journal import Entry, Journal, JournalError, now_ms
from gatekeeper.ledger import ChargeRequest, Ledger
from gatekeeper.ledger.client import REDIS_ERRORS

log = structlog.get_logger("gatekeeper.metering")

PROBE_INTERVAL_S = 0.25
# A ledger call may wait redis.timeout_ms for a free pooled connection, as long again to
# connect and as long again for the reply. The request's own deadline is a backstop for
# what those limits miss, such as an event loop too busy to notice them.
DEADLINE_FACTOR = 3
# A replay round that finds nothing ready sleeps at most this long before looking again.
IDLE_WAIT_S = 1.0
# A replay round stopped by a full connection pool or a rejecting Redis (kinds ``busy`` and
# ``response``) waits this long before the next one.
RETRY_WAIT_S = 0.25
# Error kinds after which this process stops calling Redis until a probe succeeds.
DOWN_KINDS = ("timeout", "connection")
ERROR_KINDS = ("timeout", "connection", "busy", "response", "script", "deadline")


class DeferredTickets:
    """Tickets of deferred charges not yet replayed, per pool, with the bound check."""

    def __init__(self) -> None:
        self._by_pool: dict[str, int] = {}
        self.total = 0

    def try_add(self, pool: str, cost: int, limit: int) -> bool:
        """Count ``cost`` more tickets for ``pool`` unless that passes ``limit``."""
        deferred = self._by_pool.get(pool, 0)
        if deferred + cost > limit:
            return False
        self.add(pool, cost)
        return True

    def add(self, pool: str, cost: int) -> None:
        self._by_pool[pool] = self._by_pool.get(pool, 0) + cost
        self.total += cost
        metrics.DEFERRED_TICKETS.set(self.total)

    def remove(self, pool: str, cost: int) -> None:
        left = self._by_pool.get(pool, 0) - cost
        if left > 0:
            self._by_pool[pool] = left
        else:
            self._by_pool.pop(pool, None)
        self.total = max(0, self.total - cost)
        metrics.DEFERRED_TICKETS.set(self.total)

    def of(self, pool: str) -> int:
        return self._by_pool.get(pool, 0)


class Metering:
    """The ledger's health as observed by this process, and the journal that covers outages.

    Args:
        ledger: the process's ledger.
        journal: the process's journal, not yet opened.
        timeout_s: ``redis.timeout_ms`` in seconds, the Redis client's limit per step.
    """

    def __init__(self, ledger: Ledger, journal: Journal, *, timeout_s: float) -> None:
        self.ledger = ledger
        self.journal = journal
        self.timeout_s = timeout_s
        self.deadline_s = DEADLINE_FACTOR * timeout_s
        # One deadline per charge batch bounds each request's wait for its charge.
        ledger.batcher.deadline_s = self.deadline_s
        self.deferred = DeferredTickets()
        self.up = True
        self._down_since = 0.0
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._errors = {kind: metrics.REDIS_ERRORS.labels(kind) for kind in ERROR_KINDS}
        metrics.LEDGER_UP.set(1)

    async def start(self) -> None:
        """Open the journal, adopt what exited processes left, and start replaying.

        Raises:
            OSError: when the journal directory or file cannot be created.
        """
        self._count_adopted(self.journal.open())
        self._task = asyncio.get_running_loop().create_task(self._replay_loop())
        self._task.add_done_callback(_log_replay_stopped)

    def _count_adopted(self, entries: list[Entry]) -> None:
        for entry in entries:
            if entry.op == "charge":
                self.deferred.add(entry.pool, entry.cost)
        metrics.JOURNAL_PENDING.set(self.journal.pending_count)

    # Request path.

    def failed(self, error: BaseException, *, deadline: bool = False) -> None:
        """Count a failed Redis call; stop calling Redis until a probe succeeds if it timed
        out or lost its connection.

        Args:
            error: the ``LedgerUnavailable`` raised by the ledger, or the timeout.
            deadline: True when the request's own deadline (``deadline_s``) ended the call.
                That counts as ``deadline`` and leaves Redis marked up, because a busy event
                loop, not Redis, is the likely cause.
        """
        kind = "deadline" if deadline else error_kind(error)
        self._errors[kind].inc()
        if kind in DOWN_KINDS and self.up:
            self.up = False
            self._down_since = time.monotonic()
            metrics.LEDGER_UP.set(0)
            log.warning("ledger_down", kind=kind, error=str(error))
            self._wake.set()

    async def defer_charge(self, request: ChargeRequest, limit: int) -> bool:
        """Journal the charge of a ``fail_open`` request; False when its pool is at ``limit``.

        Raises:
            JournalError: when the journal could not write the charge to disk.
        """
        entry = Entry(op="charge", charge_id=request.charge_id, tenant=request.tenant,
                      route=request.route, cost=request.cost, pools=request.pools,
                      critical=request.critical, shadow=request.shadow)
        if not self.deferred.try_add(entry.pool, entry.cost, limit):
            return False
        try:
            await self.journal.write(entry)
        except JournalError:
            self.deferred.remove(entry.pool, entry.cost)
            raise
        except asyncio.CancelledError:
            # The client left before the request was forwarded: cancel the charge too.
            self.later("refund", request.tenant, request.charge_id, request.route,
                       request.cost)
            raise
        metrics.JOURNAL_PENDING.set(self.journal.pending_count)
        return True

    def later(self, op: str, tenant: str, charge_id: str, route: str, cost: int, *,
              actual: int = 0, unknown_outcome: bool = False) -> None:
        """Journal a refund or settlement for replay; it reaches the disk with the next flush.

        Args:
            op: ``refund`` or ``settle``.
            tenant: the charge's tenant.
            charge_id: the charge's id.
            route: the route name.
            cost: tickets as charged at request time.
            actual: the actual cost, for ``settle``.
            unknown_outcome: the charge may still be on its way to Redis. The refund then
                waits for the deadline and one second more, until every call sent with the
                charge has ended.
        """
        delay_ms = int((self.deadline_s + 1.0) * 1000) if unknown_outcome else 0
        entry = Entry(op="refund" if op == "refund" else "settle", charge_id=charge_id,
                      tenant=tenant, route=route, cost=cost, actual=actual,
                      not_before=now_ms() + delay_ms if delay_ms else 0)
        try:
            self.journal.add(entry)
        except JournalError as error:
            log.error("journal_add_failed", op=op, charge_id=charge_id, error=str(error))
            return
        metrics.JOURNAL_PENDING.set(self.journal.pending_count)
        self._wake.set()

    # Replay.

    async def _replay_loop(self) -> None:
        while True:
            if not self.up:
                if not await self._probe():
                    await asyncio.sleep(PROBE_INTERVAL_S)
                    continue
                self._set_up()
            ready = self.journal.ready()
            if ready:
                if not await self._replay(ready) and self.up:
                    await asyncio.sleep(RETRY_WAIT_S)
                continue
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._idle_wait_s())

    def _idle_wait_s(self) -> float:
        next_at = self.journal.next_ready_at()
        if next_at is None:
            return IDLE_WAIT_S
        return min(IDLE_WAIT_S, max(0.0, (next_at - now_ms()) / 1000))

    async def _probe(self) -> bool:
        try:
            async with asyncio.timeout(self.timeout_s):
                return bool(await self.ledger.client.ping())
        except (*REDIS_ERRORS, TimeoutError):
            return False

    def _set_up(self) -> None:
        self.up = True
        metrics.LEDGER_UP.set(1)
        log.info("ledger_up", down_s=round(time.monotonic() - self._down_since, 3),
                 pending=self.journal.pending_count)
        try:
            self._count_adopted(self.journal.adopt_orphans())
        except OSError as error:
            log.error("journal_adopt_failed", directory=str(self.journal.directory),
                      error=str(error))

    async def _replay(self, entries: list[Entry]) -> bool:
        """Replay ``entries`` in order; stop at the first failure that a retry may cure.

        Returns:
            True when every entry was replayed or dropped, False when the round stopped.
        """
        replayed = 0
        finished = True
        for entry in entries:
            started = time.perf_counter()
            try:
                async with asyncio.timeout(self.deadline_s):
                    result = await self._apply(entry)
            except LedgerUnavailable as error:
                self.failed(error)
                if error.kind != "script":
                    finished = False
                    break
                # The call failed on the entry itself, so retrying cannot help.
                log.error("journal_entry_failed", op=entry.op, charge_id=entry.charge_id,
                          error=str(error))
                result = "failed"
            except TimeoutError as error:
                # The entry stays pending; the next round retries it.
                self.failed(error, deadline=True)
                finished = False
                break
            except ValueError as error:
                log.error("journal_entry_invalid", op=entry.op, charge_id=entry.charge_id,
                          error=str(error))
                result = "invalid"
            metrics.REPLAY_SECONDS.observe(time.perf_counter() - started)
            metrics.JOURNAL_REPLAYED.labels(entry.op, result).inc()
            self.journal.mark_done([entry])
            replayed += 1
        metrics.JOURNAL_PENDING.set(self.journal.pending_count)
        if replayed:
            log.info("journal_replayed", entries=replayed, pending=self.journal.pending_count)
        return finished

    async def _apply(self, entry: Entry) -> str:
        """Send one entry to the ledger and return the result label for metrics."""
        if entry.op == "refund":
            balance = await self.ledger.refund(entry.tenant, entry.charge_id)
            return "no_charge" if balance is None else "refunded"
        if entry.op == "settle":
            return await self._apply_settle(entry)
        return await self._apply_charge(entry)

    async def _apply_settle(self, entry: Entry) -> str:
        settled = await self.ledger.settle(entry.tenant, entry.charge_id, entry.actual)
        if settled is None:
            return "no_charge"
        if settled.charged != entry.actual:
            log.warning("actual_cost_capped", charge_id=entry.charge_id, reported=entry.actual,
                        charged=settled.charged, balance=settled.balance, replayed=True)
        return "settled"

    async def _apply_charge(self, entry: Entry) -> str:
        # A shadow route charges only what the pool can pay, also when replayed.
        request = ChargeRequest(tenant=entry.tenant, pools=entry.pools, cost=entry.cost,
                                route=entry.route, charge_id=entry.charge_id,
                                critical=entry.critical, shadow=entry.shadow,
                                deferred=not entry.shadow)
        charge = await self.ledger.charge(request)
        self.deferred.remove(entry.pool, entry.cost)
        if charge.cancelled:
            # A refund of this charge id was replayed first and left a tombstone.
            log.info("deferred_charge_cancelled", charge_id=entry.charge_id, pool=charge.pool)
            return "cancelled"
        if charge.allowed:
            return "charged"
        # Deferred and shadow charges are refused only when no candidate pool exists.
        if not entry.shadow:
            metrics.DEFERRED_UNPAID.inc(entry.cost)
            log.error("deferred_charge_unpaid", charge_id=entry.charge_id,
                      pools=list(entry.pools), cost=entry.cost, route=entry.route,
                      reason="no candidate pool exists")
        return "no_pool"

    async def close(self, budget_s: float) -> None:
        """Stop replaying after one last round of at most ``budget_s``, then close the journal."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        ready = self.journal.ready()
        if self.up and ready:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(budget_s):
                    await self._replay(ready)
        await self.journal.close()


METERING: web.AppKey[Metering] = web.AppKey("metering", Metering)


def error_kind(error: BaseException) -> str:
    """Return the error kind of a failed ledger call; a bare timeout counts as ``timeout``."""
    if isinstance(error, LedgerUnavailable):
        return error.kind
    return "timeout"


def _log_replay_stopped(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("journal_replay_stopped", error=repr(task.exception()))

"""Charge batching: every charge submitted in one event-loop tick goes out in one round trip.

The batch is a non-transactional pipeline of EVALSHA calls, so each charge is still its own
atomic script call and one failing entry does not fail the others. Entries that got NOSCRIPT
did not run, so they are resent after the script is loaded (up to ``lua.MAX_SCRIPT_LOADS``
times). On a cluster, redis-py splits the pipeline by node and sends the parts concurrently.

A batch that has no reply within ``deadline_s`` (the wait for a connection included) is
cancelled, and each of its charges ends with ``TimeoutError``. That one deadline per batch
bounds every caller's wait, so callers need no timeout of their own.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import Any

import structlog
from redis.exceptions import NoScriptError, ResponseError

from gatekeeper.errors import LedgerUnavailable
from gatekeeper.ledger import lua
from gatekeeper.ledger.client import REDIS_ERRORS, RedisClient, classify, unavailable

log = structlog.get_logger("gatekeeper.ledger.batch")


@dataclass(slots=True)
class _Call:
    keys: list[str]
    args: list[Any]
    charge_id: str
    future: asyncio.Future[Any] = field(default_factory=lambda: asyncio.get_running_loop()
                                        .create_future())


class ChargeBatcher:
    """Collects charge script calls and flushes them once per event-loop tick.

    Args:
        client: the ledger's Redis client.
        script: the registered ``charge`` script.
        limit: the ledger's connection limit (see ``client.call_limit``).

    Attributes:
        deadline_s: the longest a batch may take, in seconds; None for no deadline beyond
            the client's own timeouts. ``Metering`` sets it.
    """

    def __init__(self, client: RedisClient, script: lua.Script,
                 limit: contextlib.AbstractAsyncContextManager[Any]) -> None:
        self._client = client
        self._limit = limit
        self._script = script
        self._pending: list[_Call] = []
        self._flushes: set[asyncio.Task[None]] = set()
        self.round_trips = 0
        self.deadline_s: float | None = None

    async def submit(self, keys: list[str], args: list[Any], charge_id: str) -> Any:
        """Queue one charge call and wait for its reply.

        Raises:
            LedgerUnavailable: when Redis fails the batch or this entry.
        """
        call = _Call(keys, args, charge_id)
        if not self._pending:
            asyncio.get_running_loop().call_soon(self._start_flush)
        self._pending.append(call)
        return await call.future

    def _start_flush(self) -> None:
        batch, self._pending = self._pending, []
        task = asyncio.create_task(self._flush(batch))
        self._flushes.add(task)
        task.add_done_callback(self._flushes.discard)

    async def _flush(self, batch: list[_Call]) -> None:
        deadline = asyncio.timeout(self.deadline_s)
        try:
            async with deadline, self._limit:
                await self._send(batch, loads_left=lua.MAX_SCRIPT_LOADS)
        except LedgerUnavailable as failure:
            # The limit found no free connection in time, so no charge of the batch was sent.
            self._fail_all(batch, failure)
        except REDIS_ERRORS as error:
            if isinstance(error, TimeoutError) and deadline.expired():
                # The batch may have reached Redis, so callers treat each charge as sent.
                self._fail_all(batch, error)
                return
            ids = {"size": len(batch), "charge_ids": [call.charge_id for call in batch]}
            self._fail_all(batch, unavailable("charge", error, ids, script=True))
        finally:
            # NOTE: an unexpected error escapes this task; cancel its calls so no caller
            # waits forever.
            for call in batch:
                if not call.future.done():
                    call.future.cancel()

    async def _send(self, batch: list[_Call], *, loads_left: int) -> None:
        pipe = self._client.pipeline(transaction=False)
        for call in batch:
            pipe.evalsha(self._script.sha, len(call.keys), *call.keys, *call.args)
        self.round_trips += 1
        replies = await pipe.execute(raise_on_error=False)

        missing: list[_Call] = []
        for call, reply in zip(batch, replies, strict=True):
            if isinstance(reply, NoScriptError) and loads_left > 0:
                missing.append(call)
            elif isinstance(reply, ResponseError):
                self._fail(call, reply)
            elif not call.future.done():
                call.future.set_result(reply)
        if missing:
            log.info("ledger_script_loaded", script=self._script.name, resent=len(missing))
            await lua.register(self._client, self._script)
            await self._send(missing, loads_left=loads_left - 1)

    def _fail(self, call: _Call, error: ResponseError) -> None:
        kind, may_have_run = classify(error, script=True)
        log.warning("ledger_charge_failed", charge_id=call.charge_id, kind=kind, error=str(error))
        failure = LedgerUnavailable(f"charge script failed for charge {call.charge_id}: {error}",
                                    kind=kind, may_have_run=may_have_run)
        failure.__cause__ = error
        if not call.future.done():
            call.future.set_exception(failure)

    @staticmethod
    def _fail_all(batch: list[_Call], failure: Exception) -> None:
        for call in batch:
            if not call.future.done():
                call.future.set_exception(failure)

    async def close(self) -> None:
        """Wait for the flushes in flight."""
        if self._flushes:
            await asyncio.gather(*self._flushes, return_exceptions=True)

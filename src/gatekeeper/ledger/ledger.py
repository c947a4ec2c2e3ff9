"""The ledger: charges, refunds, grants and pool reads, each one atomic Lua script call.

Callers never see a Redis error: every failure becomes ``LedgerUnavailable``. Charges made
in the same event-loop tick share one round trip (see ``batch``).
"""

from __future__ import annotations

import asyncio
import json
from datetime import datetime
from typing import Any

import structlog

from gatekeeper.errors import LedgerUnavailable
from gatekeeper.ledger import lua
from gatekeeper.ledger.batch import ChargeBatcher
from gatekeeper.ledger.client import (
    RedisClient,
    call_limit,
    wrap_redis_errors,
    wrap_script_errors,
)
from gatekeeper.ledger.keys import KeyBuilder, split_pool
from gatekeeper.ledger.models import (
    ChargeRequest,
    ChargeResult,
    GrantResult,
    SettleResult,
    expires_ms_of,
    iso_from_ms,
    parent_of,
    validate_charge,
    validate_tickets,
    validate_token_id,
)
from gatekeeper.ledger.pool_object import pool_object

log = structlog.get_logger("gatekeeper.ledger")

# Admin operation records and idempotency keys are kept for 24 hours.
OPERATION_TTL_S = 24 * 3600


class GrantExpired(ValueError):
    """A grant whose ``expires_at`` has already passed on the Redis clock."""


class UnknownPool(LookupError):
    """A pool that does not exist."""


class IdempotencyKeyReused(ValueError):
    """An idempotency key already used by another grant or transfer of the tenant."""


class PoolFull(ValueError):
    """A grant or transfer that would take a pool's balance above ``MAX_TICKETS``."""

    def __init__(self, pool: str, balance: int, tickets: int) -> None:
        super().__init__(f"pool {pool!r} has {balance} tickets; {tickets} more would pass "
                         "the maximum balance of 2^53-1")
        self.pool = pool
        self.balance = balance


class InsufficientTickets(ValueError):
    """A transfer larger than the source pool's balance."""

    def __init__(self, pool: str, balance: int, tickets: int) -> None:
        super().__init__(f"pool {pool!r} has {balance} tickets, fewer than {tickets}")
        self.pool = pool
        self.balance = balance


class Ledger:
    """Ticket pools in Redis.

    Args:
        client: a client from ``connect_redis`` (replies decoded to ``str``, no retries).
        key_prefix: first part of every key (``redis.key_prefix``).
        charge_ttl_s: seconds a charge record or refund tombstone is kept. Within that time
            a retried charge returns its first result, a refund finds the charge, and a
            charge that arrives after a refund of its id does nothing. Use a few times the
            upstream timeout.
    """

    def __init__(self, client: RedisClient, *, key_prefix: str = "gk",
                 charge_ttl_s: int = 3600) -> None:
        self.client = client
        self.keys = KeyBuilder(key_prefix)
        self.charge_ttl_s = charge_ttl_s
        self.scripts = lua.load_scripts()
        # Every Redis call of this ledger and of its helpers (records, idempotency keys)
        # enters this context, so a cluster client never runs out of connections.
        self.limit = call_limit(client)
        self._batcher = ChargeBatcher(client, self.scripts["charge"], self.limit)
        self._registered = False
        self._registering = asyncio.Lock()
        # The last PING's outcome; ``ping`` logs only when it changes.
        self._ping_ok = True

    async def _register_scripts(self) -> None:
        """Load every script once, before the first call; NOSCRIPT handles later losses.

        Concurrent first calls wait for one registration instead of each using a connection.
        """
        if self._registered:
            return
        async with self._registering:
            if self._registered:
                return
            async with self.limit:
                with wrap_script_errors("register_scripts"):
                    for script in self.scripts.values():
                        await lua.register(self.client, script)
            self._registered = True
        log.info("ledger_scripts_registered", count=len(self.scripts))

    @property
    def batcher(self) -> ChargeBatcher:
        """The charge batcher; its ``deadline_s`` bounds how long a charge waits for Redis."""
        return self._batcher

    @property
    def round_trips(self) -> int:
        """Pipelined round trips that charges have made so far."""
        return self._batcher.round_trips

    async def _run(self, name: str, keys: list[str], args: list[Any], **ids: object) -> Any:
        await self._register_scripts()
        async with self.limit:
            with wrap_script_errors(name, **ids):
                return await lua.run(self.client, self.scripts[name], keys, args)

    def _pool_keys(self, pools: list[str]) -> list[str]:
        keys: list[str] = []
        for pool in pools:
            keys.extend(self.keys.pool(pool).as_list())
        return keys

    def _with_parents(self, pools: tuple[str, ...] | list[str]) -> list[str]:
        named = list(pools)
        for pool in pools:
            parent = parent_of(pool)
            if parent is not None and parent not in named:
                named.append(parent)
        return named

    async def charge(self, request: ChargeRequest) -> ChargeResult:
        """Charge ``request.cost`` tickets to the first candidate pool that exists.

        Concurrent calls share one pipelined round trip; each is its own atomic script call.
        When no candidate exists the charge is refused with balance 0 and the last
        candidate as pool. A deferred charge is refused only then.

        Raises:
            ValueError: for a pool of another tenant, an invalid cost or charge id.
            LedgerUnavailable: when a Redis call fails or times out.
        """
        validate_charge(request)
        named = self._with_parents(request.pools)
        keys = [
            self.keys.charge(request.tenant, request.charge_id),
            self.keys.usage(request.tenant),
            self.keys.usage_index(request.tenant),
            *self._pool_keys(named),
        ]
        args: list[Any] = [
            request.cost, request.route, int(request.critical), int(request.shadow),
            int(request.deferred), self.charge_ttl_s, len(request.pools), *named,
        ]
        await self._register_scripts()
        reply = await self._batcher.submit(keys, args, request.charge_id)
        allowed = int(reply[1]) == 1
        return ChargeResult(
            charge_id=request.charge_id,
            pool=str(reply[0]),
            allowed=allowed,
            cost=int(reply[2]) if allowed else request.cost,
            balance=int(reply[3]),
            cancelled=int(reply[5]) == 1,
        )

    async def _charged_pool(self, tenant: str, charge_id: str) -> str | None:
        """Return the pool a charge record names, or None without a record or for a tombstone."""
        validate_token_id(charge_id, "charge_id")
        record = self.keys.charge(tenant, charge_id)
        async with self.limit:
            with wrap_redis_errors("read_charge", tenant=tenant, charge_id=charge_id):
                pool = await self.client.hget(record, "pool")
        return str(pool) if pool else None

    def _charge_keys(self, tenant: str, charge_id: str,
                     pool: str | None) -> tuple[list[str], list[str]]:
        """Return the keys and pool names a refund or settle of a charge to ``pool`` needs."""
        named = self._with_parents([pool]) if pool is not None else []
        keys = [self.keys.charge(tenant, charge_id), self.keys.usage(tenant),
                self.keys.usage_index(tenant), *self._pool_keys(named)]
        return keys, named

    async def _refund_script(self, tenant: str, charge_id: str, pool: str | None) -> Any:
        keys, named = self._charge_keys(tenant, charge_id, pool)
        return await self._run("refund", keys, [self.charge_ttl_s, *named], tenant=tenant,
                               charge_id=charge_id)

    async def refund(self, tenant: str, charge_id: str) -> int | None:
        """Give a charge's tickets back, at most once.

        Without a charge record for the id, a tombstone is kept for ``charge_ttl_s``
        instead, so a charge with this id that reaches Redis later (a delayed packet)
        charges nothing.

        Returns:
            The pool's balance after the refund, or None when the charge is unknown,
            was refused, or was refunded before.

        Raises:
            LedgerUnavailable: when a Redis call fails or times out.
        """
        pool = await self._charged_pool(tenant, charge_id)
        reply = await self._refund_script(tenant, charge_id, pool)
        if reply[0] == "pool":
            # The charge reached Redis between the read and the script, which then needs
            # its pool's keys.
            pool = str(reply[1])
            reply = await self._refund_script(tenant, charge_id, pool)
        if reply[0] != "refunded":
            return None
        balance = int(reply[1])
        log.info("ledger_refunded", tenant=tenant, charge_id=charge_id, pool=pool,
                 balance=balance)
        return balance

    async def settle(self, tenant: str, charge_id: str, actual_cost: int) -> SettleResult | None:
        """Settle a charge to the actual cost the upstream reported.

        A lower cost gives the difference back. A higher one takes it from the charged
        pool as far as its floor allows: the reserve, or minus the overdraft for a
        critical route. A deferred charge takes all of it and leaves debt.

        Returns:
            What the charge costs now and the pool's balance, or None for an unknown,
            refused or refunded charge.

        Raises:
            ValueError: for an actual cost that is not a ticket count.
            LedgerUnavailable: when a Redis call fails or times out.
        """
        validate_tickets(actual_cost, "actual_cost", minimum=0)
        pool = await self._charged_pool(tenant, charge_id)
        if pool is None:
            return None
        keys, named = self._charge_keys(tenant, charge_id, pool)
        reply = await self._run("settle", keys, [actual_cost, *named], tenant=tenant,
                                charge_id=charge_id)
        if not reply:
            return None
        result = SettleResult(charged=int(reply[0]), balance=int(reply[1]))
        log.info("ledger_settled", tenant=tenant, charge_id=charge_id, pool=pool,
                 actual_cost=actual_cost, tickets=result.charged, balance=result.balance)
        return result

    async def grant(self, pool: str, tickets: int, *, expires_at: datetime | None,
                    note: str | None, actor: str, idempotency_key: str) -> GrantResult:
        """Grant tickets to a pool, creating it, exactly once per idempotency key.

        Args:
            pool: ``tenant`` or ``tenant/team``.
            tickets: 1 to 2^53-1 tickets.
            expires_at: when the grant's remaining tickets expire; None for never.
            note: free text shown with the grant.
            actor: who granted, for the audit stream.
            idempotency_key: a repeated call with this key returns the first result.

        Raises:
            ValueError: for an invalid pool id, ticket count, key or an ``expires_at`` after
                year 9999.
            GrantExpired: when ``expires_at`` has passed on the Redis clock.
            IdempotencyKeyReused: when the key belongs to another grant or transfer.
            PoolFull: when the balance would pass 2^53-1.
            LedgerUnavailable: when a Redis call fails or times out.
        """
        tenant, _team = split_pool(pool)
        validate_tickets(tickets)
        validate_token_id(idempotency_key, "idempotency key")
        expires_ms = expires_ms_of(expires_at)
        # The scripts read 0 ms as "never", so the epoch itself must count as passed here.
        if expires_at is not None and expires_ms <= 0:
            raise GrantExpired(f"expires_at {expires_at.isoformat()} has already passed")
        # The actor is left out: a retry by another admin is still the same request.
        request = json.dumps(["grant", pool, tickets, expires_ms, note or ""])
        keys = [
            self.keys.operation(tenant, idempotency_key),
            self.keys.pools(tenant),
            self.keys.audit(tenant),
            self.keys.usage(tenant),
            self.keys.usage_index(tenant),
            *self.keys.pool(pool).as_list(),
        ]
        args = [pool, tickets, expires_ms, note or "", actor, idempotency_key,
                OPERATION_TTL_S, parent_of(pool) or "", request]
        reply = await self._run("grant", keys, args, tenant=tenant, pool=pool)
        if reply[0] == "expired":
            raise GrantExpired(f"expires_at {iso_from_ms(expires_ms)} has already passed")
        if reply[0] == "reused":
            raise IdempotencyKeyReused(
                f"idempotency key {idempotency_key!r} was used for another grant or transfer "
                f"of tenant {tenant!r}")
        if reply[0] == "full":
            raise PoolFull(pool, int(reply[1]), tickets)
        (_status, grant_id, granted, remaining, expires, created, text,
         balance, debt, paid, replayed) = reply
        grant = {
            "id": grant_id,
            "tickets": int(granted),
            "remaining": int(remaining),
            "expires_at": iso_from_ms(int(expires)),
            "note": text or None,
            "created_at": iso_from_ms(int(created)),
        }
        result = GrantResult(grant=grant, pool=pool, balance=int(balance), debt=int(debt),
                             debt_paid=int(paid), replayed=int(replayed) == 1)
        log.info("ledger_granted", pool=pool, grant=grant_id, tickets=tickets, actor=actor,
                 replayed=result.replayed, balance=result.balance)
        return result

    async def transfer(self, source: str, target: str, tickets: int, *, actor: str,
                       idempotency_key: str) -> tuple[int, int, bool]:
        """Move tickets between two pools of one tenant, keeping their expiry dates.

        Runs exactly once per idempotency key; the target pool is created when missing.

        Returns:
            The source balance, the target balance and whether this call was a replay.

        Raises:
            ValueError: for pools of different tenants, the same pool twice, or an invalid
                ticket count or key.
            UnknownPool: when the source pool does not exist.
            InsufficientTickets: when the source balance is lower than ``tickets``.
            PoolFull: when the target balance would pass 2^53-1.
            IdempotencyKeyReused: when the key belongs to another grant or transfer.
            LedgerUnavailable: when a Redis call fails or times out.
        """
        tenant, _team = split_pool(source)
        if split_pool(target)[0] != tenant:
            raise ValueError(f"pools {source!r} and {target!r} belong to different tenants")
        if source == target:
            raise ValueError(f"a transfer needs two different pools, got {source!r} twice")
        validate_tickets(tickets)
        validate_token_id(idempotency_key, "idempotency key")
        keys = [
            self.keys.operation(tenant, idempotency_key),
            self.keys.pools(tenant),
            self.keys.audit(tenant),
            self.keys.usage(tenant),
            self.keys.usage_index(tenant),
            *self.keys.pool(source).as_list(),
            *self.keys.pool(target).as_list(),
        ]
        request = json.dumps(["transfer", source, target, tickets])
        args = [source, target, tickets, actor, idempotency_key, OPERATION_TTL_S,
                parent_of(target) or "", request]
        reply = await self._run("transfer", keys, args, tenant=tenant, source=source,
                                target=target)
        status, source_balance, target_balance, replayed = reply
        if status == "missing":
            raise UnknownPool(f"pool {source!r} does not exist")
        if status == "insufficient":
            raise InsufficientTickets(source, int(source_balance), tickets)
        if status == "full":
            raise PoolFull(target, int(target_balance), tickets)
        if status == "reused":
            raise IdempotencyKeyReused(
                f"idempotency key {idempotency_key!r} was used for another grant or transfer "
                f"of tenant {tenant!r}")
        log.info("ledger_transferred", source=source, target=target, tickets=tickets,
                 actor=actor, replayed=int(replayed) == 1)
        return int(source_balance), int(target_balance), int(replayed) == 1

    async def configure_pool(self, pool: str, settings: dict[str, str], *, actor: str,
                             change: str) -> bool:
        """Set pool settings, creating the pool when it does not exist.

        Args:
            pool: the pool id.
            settings: hash fields to set (see ``keys``); an empty value removes one.
            actor: who changed them, for the audit stream.
            change: the requested change as JSON text, for the audit stream.

        Returns:
            True when the pool was created.

        Raises:
            LedgerUnavailable: when a Redis call fails or times out.
        """
        tenant, _team = split_pool(pool)
        keys = [self.keys.pools(tenant), self.keys.audit(tenant), *self.keys.pool(pool).as_list()]
        pairs = [item for field_value in settings.items() for item in field_value]
        args = [pool, actor, parent_of(pool) or "", change, *pairs]
        reply = await self._run("configure_pool", keys, args, tenant=tenant, pool=pool)
        log.info("ledger_pool_configured", pool=pool, actor=actor, change=change)
        return int(reply[0]) == 1

    async def get_pool(self, pool: str) -> dict[str, Any] | None:
        """Return the pool object at this moment, or None for an unknown pool.

        Expired grants are removed first, so the balance never counts them.

        Raises:
            ValueError: for an invalid pool id.
            LedgerUnavailable: when a Redis call fails or times out.
        """
        tenant, _team = split_pool(pool)
        keys = [self.keys.usage(tenant), self.keys.usage_index(tenant),
                *self.keys.pool(pool).as_list()]
        reply = await self._run("read_pool", keys, [pool], tenant=tenant, pool=pool)
        if not reply:
            return None
        return pool_object(pool, reply)

    async def ping(self) -> bool:
        """Send PING; return False on any Redis error.

        Readiness probes call this every few seconds, so only a change is logged:
        ``ledger_ping_failed`` at the first failure, ``ledger_ping_recovered`` at the next
        success.
        """
        try:
            async with self.limit:
                with wrap_redis_errors("ping", quiet=True):
                    reachable = bool(await self.client.ping())
        except LedgerUnavailable as error:
            if self._ping_ok:
                log.warning("ledger_ping_failed", kind=error.kind, error=str(error))
            self._ping_ok = False
            return False
        if not self._ping_ok:
            log.info("ledger_ping_recovered")
        self._ping_ok = True
        return reachable

    async def close(self) -> None:
        """Wait for charges in flight, then close the client's connections."""
        await self._batcher.close()
        await self.client.aclose()

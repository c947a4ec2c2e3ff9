"""Attacks on the ledger: races, odd ids, edge times, huge numbers and script loss.

Every test runs on the single server and on the 3-master cluster. Each one ends by checking
the conservation sum (``verify_tenant``) where tickets moved.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
import redis

from gatekeeper.errors import LedgerUnavailable
from gatekeeper.ledger import (
    ChargeRequest,
    GrantExpired,
    IdempotencyKeyReused,
    InsufficientTickets,
    Ledger,
    PoolFull,
    SettleResult,
    connect_redis,
)
from gatekeeper.ledger.models import MAX_TICKETS
from gatekeeper.ledger.verify import verify_tenant

LATER = datetime.now(UTC) + timedelta(days=30)


def charge(pool: str, cost: int, charge_id: str, **options: bool) -> ChargeRequest:
    tenant = pool.split("/")[0]
    candidates = (pool, tenant) if pool != tenant else (pool,)
    return ChargeRequest(tenant, candidates, cost, "chat", charge_id, **options)


async def grant(ledger: Ledger, pool: str, tickets: int, key: str,
                expires_at: datetime | None = None) -> str:
    result = await ledger.grant(pool, tickets, expires_at=expires_at, note=None,
                                actor="test", idempotency_key=key)
    return str(result.grant["id"])


async def configure(ledger: Ledger, pool: str, **settings: str) -> None:
    await ledger.configure_pool(pool, settings, actor="test", change="{}")


async def balance(ledger: Ledger, pool: str) -> int:
    found = await ledger.get_pool(pool)
    assert found is not None
    return int(found["balance"])


async def verified(ledger: Ledger, tenant: str = "acme") -> bool:
    return (await verify_tenant(ledger, tenant)).ok


# Grants: expiry edges, big numbers and the pool's upper bound.

async def test_grant_at_epoch_rejected(ledger: Ledger) -> None:
    # 1970-01-01T00:00:00Z is 0 ms, the value that means "never expires" inside the scripts.
    with pytest.raises(GrantExpired):
        await grant(ledger, "acme", 5, "g1", datetime(1970, 1, 1, tzinfo=UTC))
    assert await ledger.get_pool("acme") is None


async def test_grant_just_after_epoch_rejected(ledger: Ledger) -> None:
    moment = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=500)
    with pytest.raises(GrantExpired):
        await grant(ledger, "acme", 5, "g1", moment)
    assert await ledger.get_pool("acme") is None


async def test_grant_before_epoch_rejected(ledger: Ledger) -> None:
    with pytest.raises(GrantExpired):
        await grant(ledger, "acme", 5, "g1", datetime(1969, 12, 31, 23, 59, tzinfo=UTC))
    assert await ledger.get_pool("acme") is None


async def test_grant_beyond_year_9999_rejected(ledger: Ledger) -> None:
    # 9999-12-31T23:59:59-12:00 is in year 10000 in UTC, which datetime cannot show.
    moment = datetime(9999, 12, 31, 23, 59, 59, tzinfo=timezone(timedelta(hours=-12)))
    with pytest.raises(ValueError, match="expires_at"):
        await grant(ledger, "acme", 5, "g1", moment)
    assert await ledger.get_pool("acme") is None


async def test_grant_at_year_9999_readable(ledger: Ledger) -> None:
    await grant(ledger, "acme", 5, "g1", datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC))
    found = await ledger.get_pool("acme")
    assert found is not None
    assert found["grants"][0]["expires_at"] == "9999-12-31T23:59:59Z"


async def test_grant_keeps_offset_time(ledger: Ledger) -> None:
    moment = datetime(2999, 1, 1, 12, tzinfo=timezone(timedelta(hours=5, minutes=30)))
    result = await ledger.grant("acme", 5, expires_at=moment, note=None, actor="t",
                                idempotency_key="g1")
    assert result.grant["expires_at"] == "2999-01-01T06:30:00Z"


@pytest.mark.parametrize("tickets", [10**15, 10**15 + 1, 2**53 - 2, MAX_TICKETS])
async def test_big_counts_stay_exact(ledger: Ledger, ledger_store: redis.Redis,
                                     tickets: int) -> None:
    # Lua's tostring gives 1e+15 for 10^15; every number must reach Redis as digits.
    result = await ledger.grant("acme", tickets, expires_at=LATER, note=None, actor="t",
                                idempotency_key="g1")
    assert result.grant["tickets"] == tickets
    spent = await ledger.charge(charge("acme", tickets - 1, "c1"))
    assert spent.balance == 1
    assert await ledger.settle("acme", "c1", tickets) == SettleResult(tickets, 0)
    assert await ledger.refund("acme", "c1") == tickets
    grants = ledger_store.hgetall("gk:{acme}:grant:acme")
    assert grants[f"{result.grant['id']}:remaining"] == str(tickets)
    assert all("e" not in value for name, value in grants.items() if not name.endswith("note"))
    assert await verified(ledger)


async def test_big_transfer_exact(ledger: Ledger) -> None:
    await grant(ledger, "acme", MAX_TICKETS, "g1")
    source, target, _ = await ledger.transfer("acme", "acme/ml", MAX_TICKETS - 3, actor="t",
                                              idempotency_key="t1")
    assert source == 3
    assert target == MAX_TICKETS - 3
    assert await verified(ledger)


async def test_grant_past_max_balance_rejected(ledger: Ledger) -> None:
    await grant(ledger, "acme", MAX_TICKETS, "g1")
    with pytest.raises(PoolFull):
        await grant(ledger, "acme", 1, "g2")
    assert await balance(ledger, "acme") == MAX_TICKETS
    assert await verified(ledger)


async def test_max_balance_stays_exact(ledger: Ledger) -> None:
    await grant(ledger, "acme", MAX_TICKETS - 1, "g1")
    await grant(ledger, "acme", 1, "g2")
    await ledger.charge(charge("acme", 1, "c1"))
    assert await balance(ledger, "acme") == MAX_TICKETS - 1
    assert await verified(ledger)


async def test_transfer_past_max_balance_rejected(ledger: Ledger) -> None:
    await grant(ledger, "acme", MAX_TICKETS, "g1")
    await grant(ledger, "acme/ml", 5, "g2")
    with pytest.raises(PoolFull):
        await ledger.transfer("acme/ml", "acme", 1, actor="t", idempotency_key="t1")
    assert await balance(ledger, "acme") == MAX_TICKETS
    assert await balance(ledger, "acme/ml") == 5
    assert await verified(ledger)


async def test_refill_stops_at_max_balance(ledger: Ledger) -> None:
    await grant(ledger, "acme", 100, "g1")
    await grant(ledger, "acme/ml", MAX_TICKETS - 5, "g2")
    await configure(ledger, "acme/ml", refill_below=str(MAX_TICKETS), refill_amount="50")
    await ledger.charge(charge("acme/ml", 1, "c1"))
    assert await balance(ledger, "acme/ml") == MAX_TICKETS
    assert await balance(ledger, "acme") == 94
    assert await verified(ledger)


async def test_grant_to_debt_pool_at_max(ledger: Ledger) -> None:
    # A grant that first pays debt may be as large as the room plus the debt.
    await grant(ledger, "acme", 2, "g1")
    await configure(ledger, "acme", overdraft="5")
    await ledger.charge(charge("acme", 7, "c1", critical=True))
    result = await ledger.grant("acme", MAX_TICKETS, expires_at=None, note=None, actor="t",
                                idempotency_key="g2")
    assert result.debt_paid == 5
    assert await balance(ledger, "acme") == MAX_TICKETS - 5
    assert await verified(ledger)


# Idempotency keys of grants and transfers share one record per tenant and key.

async def test_grant_key_reused_for_transfer(ledger: Ledger) -> None:
    await grant(ledger, "acme", 10, "k1")
    with pytest.raises(IdempotencyKeyReused):
        await ledger.transfer("acme", "acme/ml", 4, actor="t", idempotency_key="k1")
    assert await balance(ledger, "acme") == 10


async def test_transfer_key_reused_for_grant(ledger: Ledger) -> None:
    await grant(ledger, "acme", 10, "g1")
    await ledger.transfer("acme", "acme/ml", 4, actor="t", idempotency_key="k1")
    with pytest.raises(IdempotencyKeyReused):
        await grant(ledger, "acme", 3, "k1")
    assert await balance(ledger, "acme") == 6


async def test_grant_key_reused_other_pool(ledger: Ledger) -> None:
    await grant(ledger, "acme", 10, "k1")
    with pytest.raises(IdempotencyKeyReused):
        await grant(ledger, "acme/ml", 10, "k1")
    assert await ledger.get_pool("acme/ml") is None


async def test_grant_key_reused_other_tickets(ledger: Ledger) -> None:
    await grant(ledger, "acme", 10, "k1")
    with pytest.raises(IdempotencyKeyReused):
        await grant(ledger, "acme", 11, "k1")
    assert await balance(ledger, "acme") == 10


async def test_grant_key_reused_other_expiry(ledger: Ledger) -> None:
    await grant(ledger, "acme", 10, "k1")
    with pytest.raises(IdempotencyKeyReused):
        await grant(ledger, "acme", 10, "k1", LATER)


async def test_transfer_key_reused_other_target(ledger: Ledger) -> None:
    await grant(ledger, "acme", 10, "g1")
    await ledger.transfer("acme", "acme/ml", 4, actor="t", idempotency_key="k1")
    with pytest.raises(IdempotencyKeyReused):
        await ledger.transfer("acme", "acme/ops", 4, actor="t", idempotency_key="k1")
    assert await ledger.get_pool("acme/ops") is None
    assert await balance(ledger, "acme") == 6


async def test_grant_replay_other_actor(ledger: Ledger) -> None:
    # The actor is who sent the request, not part of it: a retry by another admin replays.
    first = await ledger.grant("acme", 10, expires_at=LATER, note="n", actor="a",
                               idempotency_key="k1")
    again = await ledger.grant("acme", 10, expires_at=LATER, note="n", actor="b",
                               idempotency_key="k1")
    assert again.replayed
    assert again.grant == first.grant
    assert await balance(ledger, "acme") == 10


async def test_concurrent_grants_one_key(ledger: Ledger) -> None:
    results = await asyncio.gather(*(grant(ledger, "acme", 10, "k1") for _ in range(30)))
    assert len(set(results)) == 1
    assert await balance(ledger, "acme") == 10
    assert await verified(ledger)


async def test_concurrent_transfers_one_key(ledger: Ledger) -> None:
    await grant(ledger, "acme", 100, "g1")
    await asyncio.gather(*(ledger.transfer("acme", "acme/ml", 7, actor="t",
                                           idempotency_key="k1") for _ in range(30)))
    assert await balance(ledger, "acme/ml") == 7
    assert await verified(ledger)


async def test_key_scoped_per_tenant(ledger: Ledger) -> None:
    await grant(ledger, "acme", 10, "k1")
    await grant(ledger, "globex", 20, "k1")
    assert await balance(ledger, "acme") == 10
    assert await balance(ledger, "globex") == 20


@pytest.mark.parametrize("key", ["{globex}", "a}b{c", "x:y|z", ",;", "%2F..", "~" * 200])
async def test_odd_idempotency_keys(ledger: Ledger, key: str) -> None:
    first = await grant(ledger, "acme", 10, key)
    again = await grant(ledger, "acme", 10, key)
    assert again == first
    assert await balance(ledger, "acme") == 10
    assert await verified(ledger)


# Charges, refunds and settling.

@pytest.mark.parametrize("charge_id", ["{globex}", "a}b{c", "x|y", "p,q;r", "~" * 200])
async def test_odd_charge_ids(ledger: Ledger, charge_id: str) -> None:
    await grant(ledger, "acme", 10, "g1")
    await ledger.charge(charge("acme", 3, charge_id))
    assert await ledger.refund("acme", charge_id) == 10
    assert await verified(ledger)


async def test_refund_by_other_tenant(ledger: Ledger) -> None:
    await grant(ledger, "acme", 10, "g1")
    await grant(ledger, "globex", 10, "g1")
    await ledger.charge(charge("acme", 3, "c1"))
    assert await ledger.refund("globex", "c1") is None
    assert await balance(ledger, "acme") == 7
    assert await balance(ledger, "globex") == 10


async def test_refund_unknown_charge_id(ledger: Ledger) -> None:
    await grant(ledger, "acme", 10, "g1")
    assert await ledger.refund("acme", "nope") is None
    assert await ledger.settle("acme", "nope", 4) is None
    assert await balance(ledger, "acme") == 10


async def test_concurrent_refunds_apply_once(ledger: Ledger) -> None:
    await grant(ledger, "acme", 10, "g1")
    await ledger.charge(charge("acme", 4, "c1"))
    results = await asyncio.gather(*(ledger.refund("acme", "c1") for _ in range(20)))
    assert [r for r in results if r is not None] == [10]
    assert await balance(ledger, "acme") == 10
    assert await verified(ledger)


async def test_settle_after_refund_ignored(ledger: Ledger) -> None:
    await grant(ledger, "acme", 10, "g1")
    await ledger.charge(charge("acme", 4, "c1"))
    await ledger.refund("acme", "c1")
    assert await ledger.settle("acme", "c1", 9) is None
    assert await balance(ledger, "acme") == 10
    assert await verified(ledger)


async def test_refund_after_settle_down(ledger: Ledger) -> None:
    await grant(ledger, "acme", 10, "g1")
    await ledger.charge(charge("acme", 6, "c1"))
    assert await ledger.settle("acme", "c1", 2) == SettleResult(2, 8)
    assert await ledger.refund("acme", "c1") == 10
    assert await ledger.refund("acme", "c1") is None
    assert await verified(ledger)


async def test_settle_repeated_same_cost(ledger: Ledger) -> None:
    await grant(ledger, "acme", 10, "g1")
    await ledger.charge(charge("acme", 4, "c1"))
    assert await ledger.settle("acme", "c1", 7) == SettleResult(7, 3)
    assert await ledger.settle("acme", "c1", 7) == SettleResult(7, 3)
    assert await ledger.settle("acme", "c1", 1) == SettleResult(1, 9)
    assert await verified(ledger)


async def test_settle_up_into_debt_then_grant(ledger: Ledger) -> None:
    await grant(ledger, "acme", 5, "g1")
    await configure(ledger, "acme", overdraft="4")
    await ledger.charge(charge("acme", 5, "c1", critical=True))
    assert await ledger.settle("acme", "c1", 9) == SettleResult(9, -4)
    result = await ledger.grant("acme", 10, expires_at=None, note=None, actor="t",
                                idempotency_key="g2")
    assert result.debt_paid == 4
    assert await ledger.refund("acme", "c1") == 15
    assert await verified(ledger)


async def test_settle_up_keeps_reserve(ledger: Ledger) -> None:
    # The reserve is a floor that only critical routes may spend below.
    await grant(ledger, "acme", 10, "g1")
    await configure(ledger, "acme", reserve="5")
    await ledger.charge(charge("acme", 3, "c1"))
    assert await ledger.settle("acme", "c1", 9) == SettleResult(5, 5)


async def test_refund_after_grant_expired(ledger: Ledger, ledger_store: redis.Redis) -> None:
    soon = datetime.now(UTC) + timedelta(milliseconds=400)
    await grant(ledger, "acme", 5, "g1", soon)
    await grant(ledger, "acme", 2, "g2")
    await ledger.charge(charge("acme", 3, "c1"))
    await asyncio.sleep(max(0.0, (soon - datetime.now(UTC)).total_seconds()) + 0.1)
    assert await ledger.refund("acme", "c1") == 2
    expired = [f for f in ledger_store.hkeys("gk:{acme}:usage") if f.endswith("|*|expired")]
    assert sum(int(ledger_store.hget("gk:{acme}:usage", f) or 0) for f in expired) == 5
    assert await verified(ledger)


async def test_refund_after_grant_used_up(ledger: Ledger) -> None:
    first = await grant(ledger, "acme", 5, "g1", LATER)
    await ledger.charge(charge("acme", 3, "c1"))
    await ledger.charge(charge("acme", 2, "c2"))
    await grant(ledger, "acme", 4, "g2")
    assert await ledger.refund("acme", "c1") == 7
    found = await ledger.get_pool("acme")
    assert found is not None
    assert found["grants"][0]["id"] == first
    assert found["grants"][0]["remaining"] == 3
    assert await verified(ledger)


async def test_charge_as_grant_expires(ledger: Ledger) -> None:
    soon = datetime.now(UTC) + timedelta(milliseconds=300)
    await grant(ledger, "acme", 10**6, "g1", soon)
    results: list[Any] = []
    deadline = time.monotonic() + 0.8
    batch = 0
    while time.monotonic() < deadline:
        results += await asyncio.gather(*(ledger.charge(charge("acme", 1, f"c{batch}-{i}"))
                                          for i in range(20)))
        batch += 1
    spent = sum(r.cost for r in results if r.allowed)
    assert spent < 10**6
    assert not results[-1].allowed
    assert await balance(ledger, "acme") == 0
    assert await verified(ledger)


async def test_shadow_refused_then_settled(ledger: Ledger) -> None:
    await grant(ledger, "acme", 2, "g1")
    result = await ledger.charge(charge("acme", 5, "c1", shadow=True))
    assert result.cost == 0
    assert await ledger.refund("acme", "c1") == 2
    assert await balance(ledger, "acme") == 2
    assert await verified(ledger)


async def test_borrowed_refund_after_detach(ledger: Ledger) -> None:
    await grant(ledger, "acme", 100, "g1")
    await grant(ledger, "acme/ml", 3, "g2")
    await configure(ledger, "acme/ml", borrow="1")
    await ledger.charge(charge("acme/ml", 5, "c1"))
    await configure(ledger, "acme/ml", parent="", borrow="0")
    assert await ledger.refund("acme", "c1") == 3
    assert await balance(ledger, "acme") == 100
    assert await verified(ledger)


# Concurrency: many operations at once never over-spend and always balance.

async def test_critical_race_respects_overdraft(ledger: Ledger) -> None:
    await grant(ledger, "acme", 50, "g1")
    await configure(ledger, "acme", reserve="10", overdraft="20")
    rng = random.Random(11)
    requests = [charge("acme", rng.randint(1, 7), f"c{i}", critical=rng.random() < 0.5)
                for i in range(300)]
    results = await asyncio.gather(*(ledger.charge(r) for r in requests))
    spent = sum(r.cost for r in results if r.allowed)
    assert await balance(ledger, "acme") == 50 - spent
    assert await balance(ledger, "acme") >= -20
    for request, result in zip(requests, results, strict=True):
        if result.allowed and not request.critical:
            assert result.balance >= 10
    assert await verified(ledger)


async def test_borrow_refill_chain_race(ledger: Ledger) -> None:
    await grant(ledger, "acme", 300, "g1", LATER)
    await grant(ledger, "acme/ml", 20, "g2")
    await configure(ledger, "acme", reserve="40")
    await configure(ledger, "acme/ml", borrow="1", refill_below="15", refill_amount="25")
    rng = random.Random(3)
    requests = [charge("acme/ml", rng.randint(1, 9), f"c{i}") for i in range(300)]
    results = await asyncio.gather(*(ledger.charge(r) for r in requests))
    refunds = await asyncio.gather(*(ledger.refund("acme", r.charge_id)
                                     for r in requests[::4]))
    spent = sum(r.cost for r in results if r.allowed)
    back = sum(r.cost for r, b in zip(requests[::4], refunds, strict=True) if b is not None)
    total = await balance(ledger, "acme") + await balance(ledger, "acme/ml")
    assert total == 320 - spent + back
    assert await balance(ledger, "acme") >= 40
    assert await balance(ledger, "acme/ml") >= 0
    assert await verified(ledger)


async def test_everything_at_once_conserves(ledger: Ledger) -> None:
    await grant(ledger, "acme", 400, "g0", LATER)
    await grant(ledger, "acme/ml", 50, "g1")
    await configure(ledger, "acme/ml", borrow="1", overdraft="10")
    rng = random.Random(5)
    requests = [charge(rng.choice(["acme", "acme/ml"]), rng.randint(0, 9), f"c{i}",
                       critical=rng.random() < 0.3, shadow=rng.random() < 0.1)
                for i in range(200)]
    first = await asyncio.gather(*(ledger.charge(r) for r in requests[:100]))
    operations: list[Any] = [ledger.charge(r) for r in requests[100:]]
    operations += [ledger.refund("acme", r.charge_id) for r in requests[:100:3]]
    operations += [ledger.settle("acme", r.charge_id, rng.randint(0, 12))
                   for r in requests[1:100:3]]
    operations += [grant(ledger, "acme", 5, f"extra{i}") for i in range(10)]
    operations += [ledger.transfer("acme", "acme/ml", 4, actor="t", idempotency_key=f"t{i}")
                   for i in range(10)]
    operations += [ledger.refund("acme", r.charge_id) for r in requests[:100:3]]
    outcomes = await asyncio.gather(*operations, return_exceptions=True)
    failures = [o for o in outcomes if isinstance(o, BaseException)
                and not isinstance(o, InsufficientTickets)]
    assert failures == []
    assert len(first) == 100
    assert await balance(ledger, "acme") >= 0
    assert await balance(ledger, "acme/ml") >= -10
    assert await verified(ledger)


# Key lifetimes: money never expires, auxiliary records do.

async def test_only_auxiliary_keys_expire(ledger: Ledger, ledger_store: redis.Redis) -> None:
    await grant(ledger, "acme", 100, "g1", LATER)
    await configure(ledger, "acme/ml", borrow="1", refill_below="5", refill_amount="10")
    await ledger.transfer("acme", "acme/ml", 3, actor="t", idempotency_key="t1")
    await ledger.charge(charge("acme/ml", 8, "c1"))
    await ledger.settle("acme", "c1", 9)
    await ledger.charge(charge("acme/ml", 2, "c2"))
    await ledger.refund("acme", "c2")
    permanent = ["gk:{acme}:pools", "gk:{acme}:usage", "gk:{acme}:usage-index",
                 "gk:{acme}:audit"]
    for pool in ("acme", "acme/ml"):
        permanent += [f"gk:{{acme}}:pool:{pool}", f"gk:{{acme}}:grants:{pool}",
                      f"gk:{{acme}}:grant:{pool}"]
    for key in permanent:
        assert ledger_store.ttl(key) == -1, key
    for key in ["gk:{acme}:charge:c1", "gk:{acme}:charge:c2", "gk:{acme}:op:g1",
                "gk:{acme}:op:t1"]:
        assert ledger_store.ttl(key) > 0, key


# Script loss: SCRIPT FLUSH between and during calls, and a server restart.

def flush_scripts(store: redis.Redis | redis.RedisCluster) -> None:
    if isinstance(store, redis.RedisCluster):
        for node in store.get_primaries():
            store.get_redis_connection(node).script_flush()
    else:
        store.script_flush()


async def test_flush_before_each_operation(ledger: Ledger, ledger_store: redis.Redis) -> None:
    flush_scripts(ledger_store)
    await grant(ledger, "acme", 20, "g1")
    flush_scripts(ledger_store)
    await configure(ledger, "acme/ml", borrow="1")
    flush_scripts(ledger_store)
    await ledger.transfer("acme", "acme/ml", 5, actor="t", idempotency_key="t1")
    flush_scripts(ledger_store)
    await ledger.charge(charge("acme/ml", 7, "c1"))
    flush_scripts(ledger_store)
    # Settling down returns the latest debit first: the team pool's own tickets.
    assert await ledger.settle("acme", "c1", 4) == SettleResult(4, 3)
    flush_scripts(ledger_store)
    assert await ledger.refund("acme", "c1") == 5
    flush_scripts(ledger_store)
    assert await balance(ledger, "acme") == 15
    assert await verified(ledger)


async def test_flush_during_batches(ledger: Ledger, ledger_store: redis.Redis) -> None:
    # One flush per round races a batch that spans every node. A round's batch can meet
    # two flushes: the previous round's, when it reached the server after that batch, and
    # its own, between the script load and the resend.
    tenants = [f"t{i}" for i in range(12)]
    for tenant in tenants:
        await grant(ledger, tenant, 1000, "g1")
    failures: list[BaseException] = []
    for round_number in range(10):
        requests = [charge(tenant, 1, f"c{round_number}-{n}") for n in range(4)
                    for tenant in tenants]
        outcomes = await asyncio.gather(*(ledger.charge(r) for r in requests),
                                        asyncio.to_thread(flush_scripts, ledger_store),
                                        return_exceptions=True)
        failures += [o for o in outcomes if isinstance(o, BaseException)]
    assert failures == []
    for tenant in tenants:
        assert await balance(ledger, tenant) == 960
        assert await verified(ledger, tenant)


async def test_restart_reloads_scripts(private_redis: Callable[..., Any]) -> None:
    server = private_redis(appendonly=True)
    ledger = Ledger(await connect_redis(server.url, timeout_ms=1000, max_connections=4))
    await grant(ledger, "acme", 10, "g1")
    await ledger.charge(charge("acme", 3, "c1"))
    server.stop()
    server.start()
    result = None
    for _attempt in range(3):
        # The first call after a restart may find its pooled connection closed. The retry
        # keeps the charge id, so a call that ran after all cannot charge twice.
        try:
            result = await ledger.charge(charge("acme", 2, "c2"))
            break
        except LedgerUnavailable:
            continue
    assert result is not None
    assert result.balance == 5
    assert await ledger.refund("acme", "c1") == 8
    assert await verified(ledger)
    await ledger.close()

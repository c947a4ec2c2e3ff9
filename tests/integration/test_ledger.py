"""The ledger against a real server: charges, refunds, grants, expiry and script loading."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis

from gatekeeper.errors import LedgerUnavailable
from gatekeeper.ledger import ChargeRequest, Ledger, connect_redis, lua

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


async def balance(ledger: Ledger, pool: str) -> int:
    found = await ledger.get_pool(pool)
    assert found is not None
    return int(found["balance"])


async def test_charge_takes_tickets(ledger: Ledger) -> None:
    await grant(ledger, "acme", 10, "g1")
    result = await ledger.charge(charge("acme", 3, "c1"))
    assert result.allowed
    assert result.cost == 3
    assert result.balance == 7
    assert await balance(ledger, "acme") == 7


async def test_refused_charge_changes_nothing(ledger: Ledger, ledger_store: redis.Redis) -> None:
    await grant(ledger, "acme", 2, "g1")
    result = await ledger.charge(charge("acme", 3, "c1"))
    assert not result.allowed
    assert result.balance == 2
    assert result.cost == 3
    assert await balance(ledger, "acme") == 2
    assert ledger_store.exists("gk:{acme}:charge:c1") == 0
    assert ledger_store.hget("gk:{acme}:usage", next(
        f for f in ledger_store.hkeys("gk:{acme}:usage") if f.endswith("|chat|refused"))) == "1"
    assert not [f for f in ledger_store.hkeys("gk:{acme}:usage") if f.endswith("|tickets")]


async def test_first_existing_candidate_pays(ledger: Ledger) -> None:
    await grant(ledger, "acme", 10, "g1")
    result = await ledger.charge(ChargeRequest("acme", ("acme/ml", "acme"), 4, "chat", "c1"))
    assert result.pool == "acme"
    assert result.balance == 6


async def test_team_pool_preferred(ledger: Ledger) -> None:
    await grant(ledger, "acme", 10, "g1")
    await grant(ledger, "acme/ml", 5, "g2")
    result = await ledger.charge(ChargeRequest("acme", ("acme/ml", "acme"), 4, "chat", "c1"))
    assert result.pool == "acme/ml"
    assert result.balance == 1
    assert await balance(ledger, "acme") == 10


async def test_no_pool_refused_with_last_candidate(ledger: Ledger) -> None:
    result = await ledger.charge(ChargeRequest("acme", ("acme/ml", "acme"), 1, "chat", "c1"))
    assert not result.allowed
    assert result.pool == "acme"
    assert result.balance == 0


async def test_repeated_charge_id_charges_once(ledger: Ledger) -> None:
    await grant(ledger, "acme", 10, "g1")
    first = await ledger.charge(charge("acme", 3, "c1"))
    again = await ledger.charge(charge("acme", 3, "c1"))
    assert again == first
    assert await balance(ledger, "acme") == 7


async def test_refund_happens_once(ledger: Ledger) -> None:
    await grant(ledger, "acme", 10, "g1")
    await ledger.charge(charge("acme", 3, "c1"))
    assert await ledger.refund("acme", "c1") == 10
    assert await ledger.refund("acme", "c1") is None
    assert await balance(ledger, "acme") == 10


async def test_refund_unknown_charge(ledger: Ledger) -> None:
    assert await ledger.refund("acme", "nope") is None


async def test_refund_of_refused_charge(ledger: Ledger) -> None:
    await grant(ledger, "acme", 1, "g1")
    await ledger.charge(charge("acme", 3, "c1"))
    assert await ledger.refund("acme", "c1") is None
    assert await balance(ledger, "acme") == 1


async def test_charge_takes_earliest_expiry_first(ledger: Ledger) -> None:
    never = await grant(ledger, "acme", 10, "g1")
    late = await grant(ledger, "acme", 10, "g2", LATER + timedelta(days=1))
    soon = await grant(ledger, "acme", 10, "g3", LATER)
    await ledger.charge(charge("acme", 15, "c1"))
    found = await ledger.get_pool("acme")
    assert found is not None
    remaining = {g["id"]: g["remaining"] for g in found["grants"]}
    assert soon not in remaining
    assert remaining[late] == 5
    assert remaining[never] == 10


async def test_expired_tickets_leave_balance(
    ledger: Ledger, expire_grant: Callable[[str, str], None], ledger_store: redis.Redis
) -> None:
    await grant(ledger, "acme", 10, "g1")
    soon = await grant(ledger, "acme", 7, "g2", LATER)
    await ledger.charge(charge("acme", 2, "c1"))
    expire_grant("acme", soon)
    assert await balance(ledger, "acme") == 10
    expired = [f for f in ledger_store.hkeys("gk:{acme}:usage") if f.endswith("|*|expired")]
    assert [ledger_store.hget("gk:{acme}:usage", f) for f in expired] == ["5"]


async def test_refund_to_expired_grant_counts_expired(
    ledger: Ledger, expire_grant: Callable[[str, str], None], ledger_store: redis.Redis
) -> None:
    soon = await grant(ledger, "acme", 5, "g1", LATER)
    await ledger.charge(charge("acme", 3, "c1"))
    expire_grant("acme", soon)
    record = "gk:{acme}:charge:c1"
    debits = str(ledger_store.hget(record, "debits"))
    ledger_store.hset(record, "debits", debits.rsplit(",", 1)[0] + ",1000")
    assert await ledger.refund("acme", "c1") == 0
    expired = [f for f in ledger_store.hkeys("gk:{acme}:usage") if f.endswith("|*|expired")]
    assert sum(int(ledger_store.hget("gk:{acme}:usage", f)) for f in expired) == 5


async def test_refund_restores_spent_grant(ledger: Ledger) -> None:
    soon = await grant(ledger, "acme", 5, "g1", LATER)
    await ledger.charge(charge("acme", 5, "c1"))
    await ledger.refund("acme", "c1")
    found = await ledger.get_pool("acme")
    assert found is not None
    assert [(g["id"], g["remaining"]) for g in found["grants"]] == [(soon, 5)]
    assert found["grants"][0]["expires_at"] is not None


async def test_grant_replay_returns_first_result(ledger: Ledger) -> None:
    first = await ledger.grant("acme", 10, expires_at=None, note="x", actor="a",
                               idempotency_key="k")
    again = await ledger.grant("acme", 10, expires_at=None, note="x", actor="a",
                               idempotency_key="k")
    assert again.grant == first.grant
    assert again.replayed
    assert await balance(ledger, "acme") == 10


async def test_grant_keeps_large_counts_exact(ledger: Ledger) -> None:
    await grant(ledger, "acme", 2**53 - 1, "g1")
    await ledger.charge(charge("acme", 1, "c1"))
    assert await balance(ledger, "acme") == 2**53 - 2


async def test_concurrent_charges_share_round_trip(ledger: Ledger) -> None:
    await grant(ledger, "acme", 100, "g1")
    before = ledger.round_trips
    results = await asyncio.gather(
        *(ledger.charge(charge("acme", 3, f"c{i}")) for i in range(40))
    )
    assert ledger.round_trips - before == 1
    assert sum(r.allowed for r in results) == 33
    assert await balance(ledger, "acme") == 1


async def test_script_flush_reloads(ledger: Ledger, ledger_store: redis.Redis) -> None:
    await grant(ledger, "acme", 10, "g1")
    ledger_store.script_flush()
    await asyncio.gather(*(ledger.charge(charge("acme", 1, f"c{i}")) for i in range(3)))
    ledger_store.script_flush()
    assert await ledger.refund("acme", "c0") == 8
    assert await balance(ledger, "acme") == 8


async def test_scripts_called_by_sha(redis_url: str, redis_sync: redis.Redis) -> None:
    ledger = Ledger(await connect_redis(redis_url, timeout_ms=2000, max_connections=4))
    await grant(ledger, "acme", 10, "g1")
    redis_sync.config_resetstat()
    await asyncio.gather(*(ledger.charge(charge("acme", 1, f"c{i}")) for i in range(5)))
    await ledger.close()
    stats = redis_sync.info("commandstats")
    assert stats["cmdstat_evalsha"]["calls"] == 5
    assert "cmdstat_eval" not in stats


async def test_unreachable_redis_is_unavailable(private_redis: Callable[..., object]) -> None:
    server = private_redis(appendonly=False)
    client = await connect_redis(server.url, timeout_ms=500, max_connections=2)  # type: ignore[attr-defined]
    ledger = Ledger(client)
    server.kill()  # type: ignore[attr-defined]
    with pytest.raises(LedgerUnavailable) as caught:
        await ledger.charge(charge("acme", 1, "c1"))
    assert caught.value.__cause__ is not None
    assert not await ledger.ping()
    await ledger.close()


async def test_first_calls_share_registration(ledger_url: str,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Concurrent first charges wait for one script registration instead of each loading."""
    ledger = Ledger(await connect_redis(ledger_url, timeout_ms=2000, max_connections=2))
    await ledger.grant("acme", 100, expires_at=None, note=None, actor="t", idempotency_key="g")
    loads: list[str] = []
    register = lua.register

    async def counting_register(client: Any, script: lua.Script) -> None:
        loads.append(script.name)
        await register(client, script)

    monkeypatch.setattr(lua, "register", counting_register)
    fresh = Ledger(ledger.client)
    results = await asyncio.gather(*(fresh.charge(charge("acme", 1, f"c{i}")) for i in range(50)))
    assert all(r.allowed for r in results)
    assert len(loads) == len(fresh.scripts)
    await ledger.close()

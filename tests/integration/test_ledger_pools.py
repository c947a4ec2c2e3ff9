"""Team pools, settings, transfers, settling and verification on both backends."""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime, timedelta

import pytest
import redis

from gatekeeper.ledger import (
    ChargeRequest,
    InsufficientTickets,
    Ledger,
    SettleResult,
    UnknownPool,
)
from gatekeeper.ledger.verify import verify_tenant

LATER = datetime.now(UTC) + timedelta(days=30)


def team_charge(cost: int, charge_id: str, **options: bool) -> ChargeRequest:
    return ChargeRequest("acme", ("acme/ml", "acme"), cost, "chat", charge_id, **options)


async def grant(ledger: Ledger, pool: str, tickets: int, key: str,
                expires_at: datetime | None = None) -> None:
    await ledger.grant(pool, tickets, expires_at=expires_at, note=None, actor="test",
                       idempotency_key=key)


async def configure(ledger: Ledger, pool: str, **settings: str) -> None:
    await ledger.configure_pool(pool, settings, actor="test", change="{}")


async def balance(ledger: Ledger, pool: str) -> int:
    found = await ledger.get_pool(pool)
    assert found is not None
    return int(found["balance"])


async def verified(ledger: Ledger) -> bool:
    return (await verify_tenant(ledger, "acme")).ok


async def test_borrow_takes_rest_from_parent(ledger: Ledger) -> None:
    await grant(ledger, "acme", 100, "g1")
    await grant(ledger, "acme/ml", 3, "g2")
    await configure(ledger, "acme/ml", borrow="1")
    result = await ledger.charge(team_charge(5, "c1"))
    assert result.allowed
    assert result.pool == "acme/ml"
    assert await balance(ledger, "acme/ml") == 0
    assert await balance(ledger, "acme") == 98
    assert await verified(ledger)


async def test_no_borrow_refuses(ledger: Ledger) -> None:
    await grant(ledger, "acme", 100, "g1")
    await grant(ledger, "acme/ml", 3, "g2")
    result = await ledger.charge(team_charge(5, "c1"))
    assert not result.allowed
    assert await balance(ledger, "acme") == 100


async def test_borrow_refused_when_parent_short(ledger: Ledger) -> None:
    await grant(ledger, "acme", 1, "g1")
    await grant(ledger, "acme/ml", 3, "g2")
    await configure(ledger, "acme/ml", borrow="1")
    result = await ledger.charge(team_charge(5, "c1"))
    assert not result.allowed
    assert await balance(ledger, "acme/ml") == 3
    assert await balance(ledger, "acme") == 1


async def test_refund_returns_borrowed_tickets(ledger: Ledger) -> None:
    await grant(ledger, "acme", 100, "g1")
    await grant(ledger, "acme/ml", 3, "g2")
    await configure(ledger, "acme/ml", borrow="1")
    await ledger.charge(team_charge(5, "c1"))
    await ledger.refund("acme", "c1")
    assert await balance(ledger, "acme/ml") == 3
    assert await balance(ledger, "acme") == 100
    assert await verified(ledger)


async def test_auto_refill_moves_amount(ledger: Ledger) -> None:
    await grant(ledger, "acme", 100, "g1", LATER)
    await grant(ledger, "acme/ml", 10, "g2")
    await configure(ledger, "acme/ml", refill_below="5", refill_amount="20")
    await ledger.charge(team_charge(4, "c1"))
    assert await balance(ledger, "acme/ml") == 6
    await ledger.charge(team_charge(2, "c2"))
    assert await balance(ledger, "acme/ml") == 24
    assert await balance(ledger, "acme") == 80
    found = await ledger.get_pool("acme/ml")
    assert found is not None
    assert found["grants"][0]["expires_at"] is not None
    assert await verified(ledger)


async def test_reserve_refuses_ordinary_charge(ledger: Ledger) -> None:
    await grant(ledger, "acme", 10, "g1")
    await configure(ledger, "acme", reserve="8")
    refused = await ledger.charge(ChargeRequest("acme", ("acme",), 3, "chat", "c1"))
    assert not refused.allowed
    allowed = await ledger.charge(ChargeRequest("acme", ("acme",), 3, "chat", "c2",
                                                critical=True))
    assert allowed.allowed
    assert allowed.balance == 7


async def test_overdraft_only_for_critical(ledger: Ledger) -> None:
    await grant(ledger, "acme", 2, "g1")
    await configure(ledger, "acme", overdraft="5")
    ordinary = await ledger.charge(ChargeRequest("acme", ("acme",), 4, "chat", "c1"))
    assert not ordinary.allowed
    critical = await ledger.charge(ChargeRequest("acme", ("acme",), 7, "chat", "c2",
                                                 critical=True))
    assert critical.allowed
    assert critical.balance == -5
    beyond = await ledger.charge(ChargeRequest("acme", ("acme",), 1, "chat", "c3",
                                               critical=True))
    assert not beyond.allowed
    found = await ledger.get_pool("acme")
    assert found is not None
    assert found["debt"] == 5


async def test_grant_pays_debt_first(ledger: Ledger) -> None:
    await grant(ledger, "acme", 2, "g1")
    await configure(ledger, "acme", overdraft="5")
    await ledger.charge(ChargeRequest("acme", ("acme",), 6, "chat", "c1", critical=True))
    result = await ledger.grant("acme", 10, expires_at=None, note=None, actor="t",
                                idempotency_key="g2")
    assert result.debt_paid == 4
    assert result.grant["remaining"] == 6
    assert await balance(ledger, "acme") == 6
    assert await verified(ledger)


async def test_shadow_never_refused(ledger: Ledger) -> None:
    await grant(ledger, "acme", 2, "g1")
    result = await ledger.charge(ChargeRequest("acme", ("acme",), 5, "chat", "c1", shadow=True))
    assert result.allowed
    assert result.cost == 0
    assert await balance(ledger, "acme") == 2


async def test_transfer_keeps_expiry(ledger: Ledger) -> None:
    await grant(ledger, "acme", 10, "g1", LATER)
    await ledger.transfer("acme", "acme/ml", 4, actor="t", idempotency_key="t1")
    found = await ledger.get_pool("acme/ml")
    assert found is not None
    assert found["balance"] == 4
    assert found["grants"][0]["expires_at"] == (await ledger.get_pool("acme") or {})[
        "grants"][0]["expires_at"]
    assert await verified(ledger)


async def test_transfer_larger_than_balance(ledger: Ledger) -> None:
    await grant(ledger, "acme", 3, "g1")
    with pytest.raises(InsufficientTickets):
        await ledger.transfer("acme", "acme/ml", 4, actor="t", idempotency_key="t1")
    assert await balance(ledger, "acme") == 3
    assert await ledger.get_pool("acme/ml") is None


async def test_transfer_unknown_source(ledger: Ledger) -> None:
    with pytest.raises(UnknownPool):
        await ledger.transfer("acme/x", "acme", 1, actor="t", idempotency_key="t1")


async def test_transfer_across_tenants(ledger: Ledger) -> None:
    with pytest.raises(ValueError, match="different tenants"):
        await ledger.transfer("acme", "globex", 1, actor="t", idempotency_key="t1")


async def test_transfer_replay_moves_once(ledger: Ledger) -> None:
    await grant(ledger, "acme", 10, "g1")
    await ledger.transfer("acme", "acme/ml", 4, actor="t", idempotency_key="t1")
    _, _, replayed = await ledger.transfer("acme", "acme/ml", 4, actor="t", idempotency_key="t1")
    assert replayed
    assert await balance(ledger, "acme") == 6


async def test_settle_lower_refunds_difference(ledger: Ledger) -> None:
    await grant(ledger, "acme", 10, "g1")
    await ledger.charge(ChargeRequest("acme", ("acme",), 5, "chat", "c1"))
    assert await ledger.settle("acme", "c1", 2) == SettleResult(2, 8)
    assert await verified(ledger)


async def test_settle_higher_charges_up_to_balance(ledger: Ledger) -> None:
    await grant(ledger, "acme", 10, "g1")
    await ledger.charge(ChargeRequest("acme", ("acme",), 5, "chat", "c1"))
    assert await ledger.settle("acme", "c1", 8) == SettleResult(8, 2)
    assert await ledger.settle("acme", "c1", 20) == SettleResult(10, 0)
    assert await verified(ledger)


async def test_settle_higher_uses_overdraft(ledger: Ledger) -> None:
    await grant(ledger, "acme", 10, "g1")
    await configure(ledger, "acme", overdraft="3")
    await ledger.charge(ChargeRequest("acme", ("acme",), 5, "chat", "c1", critical=True))
    assert await ledger.settle("acme", "c1", 30) == SettleResult(13, -3)
    assert await verified(ledger)


async def test_settle_higher_stops_at_zero(ledger: Ledger) -> None:
    # Overdraft is for critical routes only, also when settling up.
    await grant(ledger, "acme", 10, "g1")
    await configure(ledger, "acme", overdraft="3")
    await ledger.charge(ChargeRequest("acme", ("acme",), 5, "chat", "c1"))
    assert await ledger.settle("acme", "c1", 30) == SettleResult(10, 0)
    assert await verified(ledger)


async def test_settle_then_refund_returns_settled(ledger: Ledger) -> None:
    await grant(ledger, "acme", 10, "g1")
    await ledger.charge(ChargeRequest("acme", ("acme",), 5, "chat", "c1"))
    await ledger.settle("acme", "c1", 7)
    assert await ledger.refund("acme", "c1") == 10


async def test_verify_detects_tampered_balance(ledger: Ledger,
                                               ledger_store: redis.Redis) -> None:
    await grant(ledger, "acme", 10, "g1")
    await ledger.charge(ChargeRequest("acme", ("acme",), 3, "chat", "c1"))
    assert await verified(ledger)
    ledger_store.hincrby("gk:{acme}:pool:acme", "live", 5)
    report = await verify_tenant(ledger, "acme")
    assert not report.ok
    assert report.pools[0].balance - report.pools[0].expected == 5


async def test_concurrent_operations_conserve(ledger: Ledger) -> None:
    """Many charges, grants, transfers and refunds at once end in exact balances."""
    await grant(ledger, "acme", 500, "g0")
    await grant(ledger, "acme/ml", 100, "g1")
    await configure(ledger, "acme/ml", borrow="1")
    rng = random.Random(7)
    charges = [team_charge(rng.randint(1, 9), f"c{i}") for i in range(200)]
    grants = [grant(ledger, "acme", 5, f"extra{i}") for i in range(20)]
    transfers = [ledger.transfer("acme", "acme/ml", 3, actor="t", idempotency_key=f"t{i}")
                 for i in range(20)]
    results = await asyncio.gather(*(ledger.charge(c) for c in charges), *grants, *transfers,
                                   return_exceptions=True)
    charged = [r for r in results[:200] if not isinstance(r, BaseException)]
    refunded = await asyncio.gather(*(ledger.refund("acme", c.charge_id)
                                      for c in charges[::3]))
    assert not [r for r in results if isinstance(r, BaseException)
                and not isinstance(r, InsufficientTickets)]
    spent = sum(r.cost for r in charged if r.allowed)
    back = sum(c.cost for c, r in zip(charges[::3], refunded, strict=True) if r is not None)
    total = await balance(ledger, "acme") + await balance(ledger, "acme/ml")
    assert total == 500 + 100 + 20 * 5 - spent + back
    assert await balance(ledger, "acme/ml") >= 0
    assert await balance(ledger, "acme") >= 0
    assert await verified(ledger)

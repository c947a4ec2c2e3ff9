"""Deferred charges on both backends: never refused, the shortfall becomes debt, records balance.

A deferred charge replays a request that a ``fail_open`` route forwarded while Redis failed.
Each test ends with the conservation check (``verify_tenant``), which must count the debt.
"""

from __future__ import annotations

import pytest
import redis

from gatekeeper.ledger import ChargeRequest, Ledger, SettleResult
from gatekeeper.ledger.verify import verify_tenant


def deferred(pool: str, cost: int, charge_id: str, **options: bool) -> ChargeRequest:
    tenant = pool.split("/")[0]
    candidates = (pool, tenant) if pool != tenant else (pool,)
    return ChargeRequest(tenant, candidates, cost, "chat", charge_id, deferred=True, **options)


async def grant(ledger: Ledger, pool: str, tickets: int, key: str) -> None:
    await ledger.grant(pool, tickets, expires_at=None, note=None, actor="test",
                       idempotency_key=key)


async def configure(ledger: Ledger, pool: str, **settings: str) -> None:
    await ledger.configure_pool(pool, settings, actor="test", change="{}")


async def balance_and_debt(ledger: Ledger, pool: str) -> tuple[int, int]:
    found = await ledger.get_pool(pool)
    assert found is not None
    return int(found["balance"]), int(found["debt"])


async def verified(ledger: Ledger) -> bool:
    return (await verify_tenant(ledger, "acme")).ok


def usage(store: redis.Redis, pool: str, metric: str, route: str = "chat") -> int:
    """Sum a usage counter of a pool and route over every hour."""
    fields = store.hgetall("gk:{acme}:usage")
    return sum(int(value) for name, value in fields.items()
               if name.startswith(f"{pool}|") and name.endswith(f"|{route}|{metric}"))


async def test_shortfall_becomes_debt(ledger: Ledger, ledger_store: redis.Redis) -> None:
    await grant(ledger, "acme", 4, "g1")
    result = await ledger.charge(deferred("acme", 10, "c1"))
    assert result.allowed
    assert result.cost == 10
    assert result.balance == -6
    assert await balance_and_debt(ledger, "acme") == (-6, 6)
    assert usage(ledger_store, "acme", "tickets") == 10
    assert usage(ledger_store, "acme", "requests") == 1
    assert usage(ledger_store, "acme", "refused") == 0
    assert await verified(ledger)


async def test_pool_without_grants_owes_all(ledger: Ledger) -> None:
    await configure(ledger, "acme", reserve="0")
    result = await ledger.charge(deferred("acme", 7, "c1"))
    assert result.allowed
    assert await balance_and_debt(ledger, "acme") == (-7, 7)
    assert await verified(ledger)


async def test_debt_grows_past_overdraft(ledger: Ledger) -> None:
    await grant(ledger, "acme", 2, "g1")
    await configure(ledger, "acme", overdraft="3")
    result = await ledger.charge(deferred("acme", 10, "c1", critical=True))
    assert result.allowed
    assert await balance_and_debt(ledger, "acme") == (-8, 8)
    assert await verified(ledger)


async def test_same_id_charges_once(ledger: Ledger, ledger_store: redis.Redis) -> None:
    await grant(ledger, "acme", 4, "g1")
    first = await ledger.charge(deferred("acme", 10, "c1"))
    again = await ledger.charge(deferred("acme", 10, "c1"))
    assert again == first
    assert await balance_and_debt(ledger, "acme") == (-6, 6)
    assert usage(ledger_store, "acme", "tickets") == 10
    assert await verified(ledger)


async def test_ordinary_charge_still_refused(ledger: Ledger) -> None:
    await grant(ledger, "acme", 4, "g1")
    result = await ledger.charge(ChargeRequest("acme", ("acme",), 10, "chat", "c1"))
    assert not result.allowed
    assert await balance_and_debt(ledger, "acme") == (4, 0)


async def test_borrow_takes_parent_rest_owed(ledger: Ledger) -> None:
    await grant(ledger, "acme", 4, "g1")
    await grant(ledger, "acme/ml", 3, "g2")
    await configure(ledger, "acme/ml", borrow="1")
    result = await ledger.charge(deferred("acme/ml", 10, "c1"))
    assert result.allowed
    assert result.pool == "acme/ml"
    assert await balance_and_debt(ledger, "acme/ml") == (-3, 3)
    assert await balance_and_debt(ledger, "acme") == (0, 0)
    assert await verified(ledger)


async def test_borrow_enough_leaves_no_debt(ledger: Ledger) -> None:
    await grant(ledger, "acme", 20, "g1")
    await grant(ledger, "acme/ml", 3, "g2")
    await configure(ledger, "acme/ml", borrow="1")
    await ledger.charge(deferred("acme/ml", 10, "c1"))
    assert await balance_and_debt(ledger, "acme/ml") == (0, 0)
    assert await balance_and_debt(ledger, "acme") == (13, 0)
    assert await verified(ledger)


async def test_borrow_keeps_parent_reserve(ledger: Ledger) -> None:
    await grant(ledger, "acme", 10, "g1")
    await configure(ledger, "acme", reserve="8")
    await grant(ledger, "acme/ml", 1, "g2")
    await configure(ledger, "acme/ml", borrow="1")
    await ledger.charge(deferred("acme/ml", 5, "c1"))
    assert await balance_and_debt(ledger, "acme") == (8, 0)
    assert await balance_and_debt(ledger, "acme/ml") == (-2, 2)
    assert await verified(ledger)


async def test_no_borrow_pool_owes_all(ledger: Ledger) -> None:
    await grant(ledger, "acme", 50, "g1")
    await grant(ledger, "acme/ml", 3, "g2")
    await ledger.charge(deferred("acme/ml", 10, "c1"))
    assert await balance_and_debt(ledger, "acme/ml") == (-7, 7)
    assert await balance_and_debt(ledger, "acme") == (50, 0)
    assert await verified(ledger)


async def test_grant_pays_debt(ledger: Ledger) -> None:
    await grant(ledger, "acme", 4, "g1")
    await ledger.charge(deferred("acme", 10, "c1"))
    result = await ledger.grant("acme", 10, expires_at=None, note=None, actor="test",
                                idempotency_key="g2")
    assert result.debt_paid == 6
    assert result.balance == 4
    assert await balance_and_debt(ledger, "acme") == (4, 0)
    assert await verified(ledger)


async def test_refund_clears_debt(ledger: Ledger) -> None:
    await grant(ledger, "acme/ml", 3, "g1")
    await grant(ledger, "acme", 4, "g2")
    await configure(ledger, "acme/ml", borrow="1")
    await ledger.charge(deferred("acme/ml", 10, "c1"))
    assert await ledger.refund("acme", "c1") == 3
    assert await balance_and_debt(ledger, "acme/ml") == (3, 0)
    assert await balance_and_debt(ledger, "acme") == (4, 0)
    assert await verified(ledger)


async def test_settle_up_goes_into_debt(ledger: Ledger) -> None:
    await grant(ledger, "acme", 4, "g1")
    await ledger.charge(deferred("acme", 3, "c1"))
    assert await ledger.settle("acme", "c1", 9) == SettleResult(9, -5)
    assert await balance_and_debt(ledger, "acme") == (-5, 5)
    assert await verified(ledger)


async def test_settle_down_pays_debt(ledger: Ledger) -> None:
    await grant(ledger, "acme", 4, "g1")
    await ledger.charge(deferred("acme", 10, "c1"))
    assert await ledger.settle("acme", "c1", 5) == SettleResult(5, -1)
    assert await balance_and_debt(ledger, "acme") == (-1, 1)
    assert await verified(ledger)


async def test_no_pool_refused(ledger: Ledger) -> None:
    result = await ledger.charge(deferred("acme/ml", 5, "c1"))
    assert not result.allowed
    assert not result.cancelled
    assert result.pool == "acme"
    assert await ledger.get_pool("acme") is None


async def test_deferred_shadow_rejected(ledger: Ledger) -> None:
    with pytest.raises(ValueError, match="deferred and shadow"):
        await ledger.charge(deferred("acme", 5, "c1", shadow=True))


async def test_many_deferred_conserve(ledger: Ledger) -> None:
    await grant(ledger, "acme", 30, "g1")
    await grant(ledger, "acme/ml", 10, "g2")
    await configure(ledger, "acme/ml", borrow="1")
    results = [await ledger.charge(deferred("acme/ml", 7, f"c{i}")) for i in range(10)]
    assert all(result.allowed for result in results)
    team, team_debt = await balance_and_debt(ledger, "acme/ml")
    tenant, _tenant_debt = await balance_and_debt(ledger, "acme")
    assert team + tenant == 40 - 70
    assert team_debt == 30
    assert await verified(ledger)

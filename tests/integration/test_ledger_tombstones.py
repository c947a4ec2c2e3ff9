"""Refund tombstones on both backends: a refund that finds no charge voids a later charge.

A charge whose reply was lost is refunded later by id. When that refund reaches Redis before
the charge does (a delayed packet), the charge must then charge nothing.
"""

from __future__ import annotations

from typing import Any

import pytest
import redis

from gatekeeper.ledger import ChargeRequest, Ledger
from gatekeeper.ledger.verify import verify_tenant

RECORD = "gk:{acme}:charge:c1"


def charge(cost: int, charge_id: str = "c1", **options: bool) -> ChargeRequest:
    return ChargeRequest("acme", ("acme",), cost, "chat", charge_id, **options)


async def setup_pool(ledger: Ledger, tickets: int = 10) -> None:
    await ledger.grant("acme", tickets, expires_at=None, note=None, actor="test",
                       idempotency_key="g1")


async def balance(ledger: Ledger) -> int:
    found = await ledger.get_pool("acme")
    assert found is not None
    return int(found["balance"])


async def test_charge_after_refund_cancelled(ledger: Ledger,
                                            ledger_store: redis.Redis) -> None:
    await setup_pool(ledger)
    assert await ledger.refund("acme", "c1") is None
    result = await ledger.charge(charge(4))
    assert not result.allowed
    assert result.cancelled
    assert result.pool == "acme"
    assert await balance(ledger) == 10
    assert not [name for name in ledger_store.hkeys("gk:{acme}:usage")
                if name.endswith("|chat|tickets") or name.endswith("|chat|refused")]
    assert (await verify_tenant(ledger, "acme")).ok


async def test_deferred_charge_cancelled(ledger: Ledger) -> None:
    await setup_pool(ledger)
    await ledger.refund("acme", "c1")
    result = await ledger.charge(charge(4, deferred=True))
    assert not result.allowed
    assert result.cancelled
    assert await balance(ledger) == 10


async def test_tombstone_expires_with_charge_ttl(ledger: Ledger,
                                                ledger_store: redis.Redis) -> None:
    await ledger.refund("acme", "c1")
    assert ledger_store.hgetall(RECORD) == {"allowed": "0", "refunded": "1"}
    assert ledger.charge_ttl_s - 10 < ledger_store.ttl(RECORD) <= ledger.charge_ttl_s


async def test_repeated_refund_keeps_tombstone(ledger: Ledger,
                                              ledger_store: redis.Redis) -> None:
    await setup_pool(ledger)
    assert await ledger.refund("acme", "c1") is None
    assert await ledger.refund("acme", "c1") is None
    assert ledger_store.hgetall(RECORD) == {"allowed": "0", "refunded": "1"}
    assert (await ledger.charge(charge(4))).cancelled


async def test_settle_of_tombstone_ignored(ledger: Ledger) -> None:
    await setup_pool(ledger)
    await ledger.refund("acme", "c1")
    assert await ledger.settle("acme", "c1", 4) is None
    assert await balance(ledger) == 10


async def test_refund_of_refused_charge(ledger: Ledger) -> None:
    # A refused charge stores no record, so its refund leaves a tombstone too.
    await setup_pool(ledger, tickets=2)
    assert not (await ledger.charge(charge(4))).allowed
    assert await ledger.refund("acme", "c1") is None
    assert (await ledger.charge(charge(1))).cancelled
    assert await balance(ledger) == 2


async def test_existing_charge_not_tombstoned(ledger: Ledger,
                                             ledger_store: redis.Redis) -> None:
    await setup_pool(ledger)
    await ledger.charge(charge(4))
    assert await ledger.refund("acme", "c1") == 10
    assert ledger_store.hget(RECORD, "pool") == "acme"
    again = await ledger.charge(charge(4))
    assert again.allowed
    assert not again.cancelled
    assert await balance(ledger) == 10


async def test_charge_arriving_during_refund(ledger: Ledger,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """A charge that lands between the refund's record read and its script is refunded."""
    await setup_pool(ledger)
    await ledger.charge(charge(4))

    async def no_record(*_args: Any) -> None:
        return None

    monkeypatch.setattr(ledger, "_charged_pool", no_record)
    assert await ledger.refund("acme", "c1") == 10
    assert await balance(ledger) == 10
    assert (await verify_tenant(ledger, "acme")).ok

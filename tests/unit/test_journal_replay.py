"""Replaying journal entries into the ledger, and the per-pool bound on deferred tickets."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client import REGISTRY
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ReadOnlyError, ResponseError
from structlog.testing import capture_logs

from gatekeeper.errors import LedgerUnavailable
from gatekeeper.journal import Journal
from gatekeeper.ledger import ChargeRequest, ChargeResult, SettleResult
from gatekeeper.ledger.client import classify
from gatekeeper.metering import DeferredTickets, Metering


class FakeLedger:
    """Records calls; ``fail`` is raised instead of a reply.

    ``allow`` and ``cancelled`` decide charges; ``charged`` is what a settle charges (the
    actual cost when None).
    """

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.fail: Exception | None = None
        self.allow = True
        self.cancelled = False
        self.charged: int | None = None
        self.client = self
        # Metering sets the charge deadline on the ledger's batcher.
        self.batcher = SimpleNamespace(deadline_s=None)

    async def ping(self) -> bool:
        return self.fail is None

    def _check(self) -> None:
        if self.fail is not None:
            raise self.fail

    async def charge(self, request: ChargeRequest) -> ChargeResult:
        self._check()
        self.calls.append(("charge", request))
        return ChargeResult(request.charge_id, request.pools[0], self.allow, request.cost, 7,
                            cancelled=self.cancelled)

    async def refund(self, tenant: str, charge_id: str) -> int | None:
        self._check()
        self.calls.append(("refund", charge_id))
        return None

    async def settle(self, tenant: str, charge_id: str, actual: int) -> SettleResult:
        self._check()
        self.calls.append(("settle", (charge_id, actual)))
        return SettleResult(actual if self.charged is None else self.charged, 0)


def unavailable(cause: Exception) -> LedgerUnavailable:
    """Wrap ``cause`` as the ledger does for a failed script call."""
    kind, may_have_run = classify(cause, script=True)
    error = LedgerUnavailable(str(cause), kind=kind, may_have_run=may_have_run)
    error.__cause__ = cause
    return error


def unpaid_total() -> float:
    return REGISTRY.get_sample_value("gatekeeper_deferred_unpaid_tickets_total") or 0.0


def replayed_total(operation: str, result: str) -> float:
    labels = {"operation": operation, "result": result}
    return REGISTRY.get_sample_value("gatekeeper_journal_replayed_entries_total", labels) or 0.0


def charge_request(charge_id: str = "c1", cost: int = 2) -> ChargeRequest:
    return ChargeRequest(tenant="acme", pools=("acme",), cost=cost, route="echo",
                         charge_id=charge_id)


@pytest.fixture
def ledger() -> FakeLedger:
    return FakeLedger()


@pytest.fixture
async def metering(tmp_path: Path, ledger: FakeLedger) -> Metering:
    metering = Metering(ledger, Journal(tmp_path), timeout_s=0.2)  # type: ignore[arg-type]
    metering.journal.open()
    return metering


def test_bound_per_pool() -> None:
    deferred = DeferredTickets()
    accepted = [deferred.try_add("acme", 2, 5) for _ in range(3)]
    other = deferred.try_add("globex", 5, 5)
    assert accepted == [True, True, False]
    assert other
    assert deferred.of("acme") == 4
    assert deferred.total == 9


def test_bound_released_on_remove() -> None:
    deferred = DeferredTickets()
    deferred.try_add("acme", 5, 5)
    deferred.remove("acme", 5)
    assert deferred.try_add("acme", 5, 5)


async def test_replay_charges_as_deferred(metering: Metering, ledger: FakeLedger) -> None:
    assert await metering.defer_charge(charge_request(), limit=10)
    await metering._replay(metering.journal.ready())
    kind, request = ledger.calls[0]
    assert kind == "charge"
    assert request.charge_id == "c1"
    assert request.deferred
    assert not request.critical
    assert metering.deferred.total == 0
    assert metering.journal.pending_count == 0


async def test_replay_keeps_route_flags(metering: Metering, ledger: FakeLedger) -> None:
    critical = ChargeRequest(tenant="acme", pools=("acme",), cost=2, route="echo",
                             charge_id="c1", critical=True)
    shadow = ChargeRequest(tenant="acme", pools=("acme",), cost=2, route="echo",
                           charge_id="c2", shadow=True)
    await metering.defer_charge(critical, limit=10)
    await metering.defer_charge(shadow, limit=10)
    await metering._replay(metering.journal.ready())
    replayed = [request for _kind, request in ledger.calls]
    assert replayed[0].critical
    assert replayed[0].deferred
    # A shadow route charges only what the pool can pay, also when replayed.
    assert replayed[1].shadow
    assert not replayed[1].deferred


async def test_replay_keeps_order(metering: Metering, ledger: FakeLedger) -> None:
    await metering.defer_charge(charge_request(), limit=10)
    metering.later("settle", "acme", "c1", "echo", 2, actual=5)
    metering.later("refund", "acme", "c1", "echo", 5)
    await metering._replay(metering.journal.ready())
    assert [kind for kind, _args in ledger.calls] == ["charge", "settle", "refund"]


async def test_charge_without_pool_unpaid(metering: Metering, ledger: FakeLedger) -> None:
    # A deferred charge is refused only when none of its candidate pools exists.
    before = unpaid_total()
    ledger.allow = False
    await metering.defer_charge(charge_request(cost=4), limit=10)
    await metering._replay(metering.journal.ready())
    assert unpaid_total() - before == 4
    assert metering.journal.pending_count == 0


async def test_cancelled_charge_not_unpaid(metering: Metering, ledger: FakeLedger) -> None:
    before_unpaid = unpaid_total()
    before_cancelled = replayed_total("charge", "cancelled")
    ledger.allow = False
    ledger.cancelled = True
    await metering.defer_charge(charge_request(cost=4), limit=10)
    await metering._replay(metering.journal.ready())
    assert unpaid_total() == before_unpaid
    assert replayed_total("charge", "cancelled") - before_cancelled == 1
    assert metering.deferred.total == 0
    assert metering.journal.pending_count == 0


async def test_capped_settle_logged(metering: Metering, ledger: FakeLedger) -> None:
    ledger.charged = 3
    metering.later("settle", "acme", "c1", "echo", 2, actual=5)
    with capture_logs() as logs:
        await metering._replay(metering.journal.ready())
    capped = [line for line in logs if line["event"] == "actual_cost_capped"]
    assert len(capped) == 1
    assert capped[0]["charge_id"] == "c1"
    assert capped[0]["reported"] == 5
    assert capped[0]["charged"] == 3


async def test_connection_error_stops_replay(metering: Metering, ledger: FakeLedger) -> None:
    await metering.defer_charge(charge_request("c1"), limit=10)
    await metering.defer_charge(charge_request("c2"), limit=10)
    ledger.fail = unavailable(RedisConnectionError("refused"))
    await metering._replay(metering.journal.ready())
    assert not metering.up
    assert metering.journal.pending_count == 2
    assert metering.deferred.total == 4


async def test_script_error_skips_entry(metering: Metering, ledger: FakeLedger) -> None:
    metering.later("refund", "acme", "c1", "echo", 1)
    ledger.fail = unavailable(ResponseError("charge record names pool x, not y"))
    await metering._replay(metering.journal.ready())
    assert metering.up
    assert metering.journal.pending_count == 0


async def test_rejected_call_keeps_entry(metering: Metering, ledger: FakeLedger) -> None:
    # READONLY during a failover passes, so the entry waits for the next round.
    await metering.defer_charge(charge_request("c1"), limit=10)
    ledger.fail = unavailable(ReadOnlyError("You can't write against a read only replica."))
    finished = await metering._replay(metering.journal.ready())
    assert not finished
    assert metering.up
    assert metering.journal.pending_count == 1
    assert metering.deferred.total == 2


async def test_busy_pool_keeps_entry_and_up(metering: Metering, ledger: FakeLedger) -> None:
    await metering.defer_charge(charge_request("c1"), limit=10)
    ledger.fail = unavailable(RedisConnectionError("No connection available."))
    finished = await metering._replay(metering.journal.ready())
    assert not finished
    assert metering.up
    assert metering.journal.pending_count == 1


async def test_unknown_outcome_waits(metering: Metering) -> None:
    metering.later("refund", "acme", "c1", "echo", 1, unknown_outcome=True)
    assert metering.journal.ready() == []
    assert metering.journal.pending_count == 1


async def test_full_bound_defers_nothing(metering: Metering) -> None:
    first = await metering.defer_charge(charge_request("c1", cost=3), limit=4)
    second = await metering.defer_charge(charge_request("c2", cost=3), limit=4)
    assert first
    assert not second
    assert metering.journal.pending_count == 1


async def test_failed_call_marks_down(metering: Metering) -> None:
    metering.failed(unavailable(TimeoutError()))
    assert not metering.up


async def test_response_error_keeps_up(metering: Metering) -> None:
    metering.failed(unavailable(ResponseError("NOSCRIPT")))
    assert metering.up


async def test_busy_error_keeps_up(metering: Metering) -> None:
    metering.failed(LedgerUnavailable("no free connection", kind="busy", may_have_run=False))
    assert metering.up


async def test_error_counted_by_kind(metering: Metering) -> None:
    labels = {"kind": "busy"}
    before = REGISTRY.get_sample_value("gatekeeper_redis_errors_total", labels) or 0.0
    metering.failed(LedgerUnavailable("no free connection", kind="busy", may_have_run=False))
    after = REGISTRY.get_sample_value("gatekeeper_redis_errors_total", labels) or 0.0
    assert after - before == 1


async def test_probe_brings_up(metering: Metering, ledger: FakeLedger) -> None:
    metering.failed(unavailable(RedisConnectionError("refused")))
    probed = await metering._probe()
    assert probed

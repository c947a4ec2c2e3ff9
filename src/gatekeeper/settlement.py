"""What happens to a request's charge after the charge: refund, actual cost, or a later replay.

A ``Settlement`` belongs to one charged request. It gives the charge back when the upstream
fails in a way the route's ``refund_on`` lists, applies the actual cost that a
``cost_header`` reports, and builds the ``Ticket-*`` response headers. When Redis does not
reply in time, or the charge itself was deferred, the refund or settlement goes to the
journal and is replayed later (see ``gatekeeper.metering``). So a Redis fault never turns
into a 500, and its refund waits in the journal. Only a failed journal write (a full or
broken disk) loses it, and that failure is logged as ``journal_write_failed``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass

import structlog
from multidict import CIMultiDictProxy

from gatekeeper import metrics
from gatekeeper.config import Route
from gatekeeper.errors import LedgerUnavailable
from gatekeeper.metering import Metering
from gatekeeper.record import RequestRecord

log = structlog.get_logger("gatekeeper.gateway")

# A reported actual cost longer than this is not a ticket count (tickets stay below 2**53).
MAX_COST_DIGITS = 16


@dataclass(slots=True)
class Settlement:
    """The charge of one request and what happened to it after forwarding.

    Attributes:
        metering: the process's ledger access and journal.
        route: the matched route.
        record: the request's canonical log record.
        route_metrics: the route's metric children.
        tenant_metrics: the tenant's metric children, or None without tenant labels.
        charge_id: the charge's id.
        tenant: the tenant charged.
        pool: the pool charged (for a deferred charge: its first candidate).
        balance: the pool's balance after the charge; None for a deferred charge.
        cost: tickets charged now.
        deferred: the charge waits in the journal because Redis failed.
        refunded: a refund was made or journaled.
    """

    metering: Metering
    route: Route
    record: RequestRecord
    route_metrics: metrics.RouteMetrics
    tenant_metrics: metrics.TenantMetrics | None
    charge_id: str
    tenant: str
    pool: str
    balance: int | None
    cost: int
    deferred: bool = False
    refunded: bool = False

    def headers(self) -> dict[str, str]:
        if self.deferred or self.balance is None:
            return {"Ticket-Cost": str(self.cost), "Ticket-Metering": "deferred"}
        return {"Ticket-Cost": str(self.cost), "Ticket-Balance": str(self.balance)}

    async def refund(self, reason: str) -> None:
        """Give the charge back to its pool, now or through the journal; at most once."""
        if self.refunded:
            return
        self.refunded = True
        self._count_refunded(self.cost)
        cost, self.cost = self.cost, 0
        if self.deferred or not self.metering.up:
            self._later("refund", cost)
            return
        try:
            async with asyncio.timeout(self.metering.deadline_s):
                balance = await self.metering.ledger.refund(self.tenant, self.charge_id)
        except LedgerUnavailable as error:
            self.metering.failed(error)
            self._later("refund", cost)
            return
        except TimeoutError as error:
            self.metering.failed(error, deadline=True)
            self._later("refund", cost)
            return
        if balance is not None:
            self.balance = balance
            _show_balance(self.record, self.pool, balance)
        log.info("charge_refunded", charge_id=self.charge_id, reason=reason, pool=self.pool,
                 balance=self.balance)

    async def on_headers(self, status: int, headers: CIMultiDictProxy[str]) -> Mapping[str, str]:
        """Settle once the upstream's response headers arrive: refund a 5xx, or apply the
        actual cost."""
        self.record.upstream_headers_at = time.perf_counter()
        if status >= 500 and "5xx" in self.route.refund_on:
            await self.refund("5xx")
        elif self.route.cost_header:
            await self._settle_actual(headers.get(self.route.cost_header))
        return self.headers()

    async def _settle_actual(self, reported: str | None) -> None:
        if reported is None or not reported.isdigit() or len(reported) > MAX_COST_DIGITS:
            log.warning("actual_cost_invalid", header=self.route.cost_header,
                        value=(reported or "")[:32], charge_id=self.charge_id, kept=self.cost)
            return
        actual = int(reported)
        charged = self.cost
        if self.deferred or not self.metering.up:
            # The journal settles it later. A deferred charge is then settled in full, and
            # another one may still stop at its floor (logged as actual_cost_capped).
            self._set_cost(actual)
            self._later("settle", charged, actual)
            return
        try:
            async with asyncio.timeout(self.metering.deadline_s):
                settled = await self.metering.ledger.settle(self.tenant, self.charge_id,
                                                            actual)
        except LedgerUnavailable as error:
            self.metering.failed(error)
            self._set_cost(actual)
            self._later("settle", charged, actual)
            return
        except TimeoutError as error:
            self.metering.failed(error, deadline=True)
            self._set_cost(actual)
            self._later("settle", charged, actual)
            return
        if settled is None:
            # The charge record expired or was refunded since the charge; nothing changed.
            log.warning("settle_found_no_charge", charge_id=self.charge_id, pool=self.pool,
                        reported=actual)
            return
        if settled.charged != actual:
            log.warning("actual_cost_capped", charge_id=self.charge_id, pool=self.pool,
                        reported=actual, charged=settled.charged, balance=settled.balance)
        self._set_cost(settled.charged)
        self.balance = settled.balance
        _show_balance(self.record, self.pool, settled.balance)

    def _set_cost(self, cost: int) -> None:
        """Make ``cost`` the request's charge and count the change in the metrics."""
        if cost > self.cost:
            self._count_charged(cost - self.cost)
        elif cost < self.cost:
            self._count_refunded(self.cost - cost)
        self.cost = cost

    def _later(self, op: str, cost: int, actual: int = 0) -> None:
        self.metering.later(op, self.tenant, self.charge_id, self.route.name, cost,
                            actual=actual)
        log.warning("ledger_operation_journaled", op=op, charge_id=self.charge_id,
                    pool=self.pool, deferred_charge=self.deferred)

    def _count_charged(self, tickets: int) -> None:
        self.route_metrics.charged.inc(tickets)
        if self.tenant_metrics is not None:
            self.tenant_metrics.charged.inc(tickets)

    def _count_refunded(self, tickets: int) -> None:
        if tickets <= 0:
            return
        self.route_metrics.refunded.inc(tickets)
        if self.tenant_metrics is not None:
            self.tenant_metrics.refunded.inc(tickets)


def _show_balance(record: RequestRecord, pool: str, balance: int) -> None:
    """Export a pool's balance, which names a tenant, only with tenant labels on."""
    if record.tenant_labels:
        metrics.POOL_BALANCE.labels(pool).set(balance)

"""The proxy's request handler: match, authenticate, charge, forward, settle.

Each step either passes the request on or raises a :mod:`gatekeeper.errors` error that the
problem middleware turns into a response. The charge happens only after every check that
can reject the request for free (framing, route, body size, token, scope), so a rejected
request never changes a balance.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass

import structlog
from aiohttp import web
from multidict import CIMultiDictProxy

from gatekeeper.appkeys import LEDGER, RUNTIME
from gatekeeper.auth import check_scopes
from gatekeeper.config import Route
from gatekeeper.errors import (
    BadGateway,
    GatewayTimeout,
    LedgerUnavailable,
    NotFound,
    PayloadTooLarge,
    PaymentRequired,
    ServiceUnavailable,
)
from gatekeeper.ledger import ChargeRequest, ChargeResult, Ledger
from gatekeeper.proxy import BodyTooLarge, UpstreamFailure, check_request_framing, declared_too_large
from gatekeeper.record import RECORD, RequestRecord
from gatekeeper.routing import normalize_path, resolve_pool

log = structlog.get_logger("gatekeeper.gateway")


@dataclass(slots=True)
class Settlement:
    """The charge of one request and what happened to it after forwarding."""

    ledger: Ledger
    route: Route
    charge: ChargeResult
    tenant: str
    balance: int
    cost: int
    refunded: bool = False

    def headers(self) -> dict[str, str]:
        return {"Ticket-Cost": str(self.cost), "Ticket-Balance": str(self.balance)}

    async def refund(self, reason: str) -> None:
        """Return the charge to its pool; the ledger makes a second refund a no-op."""
        if self.refunded:
            return
        self.refunded = True
        try:
            balance = await self.ledger.refund(self.tenant, self.charge.charge_id)
        except LedgerUnavailable as exc:
            # NOTE: the refund is lost for now when Redis is down at this moment; the
            # charge record names the id so an operator can refund it by hand.
            log.error("refund_failed", charge_id=self.charge.charge_id, reason=reason,
                      pool=self.charge.pool, error=str(exc))
            return
        if balance is not None:
            self.balance = balance
        self.cost = 0
        log.info("charge_refunded", charge_id=self.charge.charge_id, reason=reason,
                 pool=self.charge.pool, balance=self.balance)

    async def on_headers(self, status: int, headers: CIMultiDictProxy[str]) -> Mapping[str, str]:
        """Settle when the upstream's response headers arrive: refund a 5xx, or apply actual cost."""
        if status >= 500 and "5xx" in self.route.refund_on:
            await self.refund("5xx")
        elif self.route.cost_header:
            await self._settle_actual(headers.get(self.route.cost_header))
        return self.headers()

    async def _settle_actual(self, reported: str | None) -> None:
        if reported is None or not reported.isdigit() or len(reported) > 16:
            log.warning("actual_cost_invalid", header=self.route.cost_header,
                        value=(reported or "")[:32], charge_id=self.charge.charge_id,
                        kept=self.cost)
            return
        actual = int(reported)
        self.balance = await self.ledger.settle(self.tenant, self.charge.charge_id, actual)
        self.cost = actual


async def handle(request: web.Request) -> web.StreamResponse:
    """Serve one proxied request."""
    snapshot = request.app[RUNTIME].current
    record = request[RECORD]

    check_request_framing(request)
    path = normalize_path(request.raw_path.partition("?")[0])
    route = snapshot.router.match(request.method, path, request.host)
    if route is None:
        raise NotFound(f"No route matches {request.method} {path}.")
    record.route = route.name
    if declared_too_large(request, route, snapshot.config.proxy):
        raise PayloadTooLarge("The request body is larger than this route accepts.")

    tenant = team = pool = None
    settlement: Settlement | None = None
    if route.auth == "jwt":
        identity = await snapshot.authenticator.authenticate(request.headers.get("Authorization"))
        tenant, team = identity.tenant, identity.team
        record.tenant = tenant
        check_scopes(identity, route.scopes)
        candidates = resolve_pool(route, tenant, team)
        if route.cost > 0:
            settlement = await _charge(request.app[LEDGER], route, tenant, candidates, record)
            pool = settlement.charge.pool
        else:
            pool = candidates[0]

    return await _forward(request, route, path, tenant, team, pool, settlement)


async def _charge(
    ledger: Ledger, route: Route, tenant: str, candidates: tuple[str, ...], record: RequestRecord
) -> Settlement:
    charge_request = ChargeRequest(
        tenant=tenant,
        pools=candidates,
        cost=route.cost,
        route=route.name,
        # Never derived from client input: a reused id would make the next request free.
        charge_id=uuid.uuid4().hex,
        critical=route.critical,
        shadow=route.shadow,
    )
    try:
        charge = await ledger.charge(charge_request)
    except LedgerUnavailable as exc:
        log.warning("ledger_unavailable", route=route.name, error=str(exc))
        raise ServiceUnavailable("The ticket ledger is unavailable; retry shortly.") from exc

    record.pool = charge.pool
    record.balance = charge.balance
    if not charge.allowed:
        record.cost = 0
        raise PaymentRequired(pool=charge.pool, cost=route.cost, balance=charge.balance)
    record.cost = route.cost
    return Settlement(ledger, route, charge, tenant, charge.balance, route.cost)


async def _forward(
    request: web.Request,
    route: Route,
    path: str,
    tenant: str | None,
    team: str | None,
    pool: str | None,
    settlement: Settlement | None,
) -> web.StreamResponse:
    forwarder = request.app[RUNTIME].current.forwarder
    record = request[RECORD]
    on_headers = settlement.on_headers if settlement else _no_settlement
    record.start_upstream()
    try:
        response = await forwarder.forward(
            request, route=route, path=path, tenant=tenant, team=team, pool=pool,
            on_headers=on_headers,
        )
    except UpstreamFailure as failure:
        record.stop_upstream()
        await _refund_failure(settlement, route, failure.kind)
        headers = settlement.headers() if settlement else {}
        if failure.kind == "timeout":
            raise GatewayTimeout("The upstream sent no response headers in time.",
                                 headers=headers) from failure
        raise BadGateway("The upstream could not be reached.", headers=headers) from failure
    except BodyTooLarge as exc:
        record.stop_upstream()
        if settlement:
            await settlement.refund("body_too_large")
        raise PayloadTooLarge("The request body is larger than this route accepts.",
                              headers=settlement.headers() if settlement else {}) from exc
    record.stop_upstream()
    if settlement:
        record.cost = settlement.cost
        record.balance = settlement.balance
    return response


async def _refund_failure(settlement: Settlement | None, route: Route, kind: str) -> None:
    log.warning("upstream_failed", kind=kind, route=route.name)
    if settlement and kind in route.refund_on:
        await settlement.refund(kind)


async def _no_settlement(status: int, headers: CIMultiDictProxy[str]) -> Mapping[str, str]:
    return {}

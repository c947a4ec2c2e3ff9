"""The proxy's request handler: match, authenticate, charge, forward, settle.

Each step either passes the request on or raises a :mod:`gatekeeper.errors` error that the
problem middleware turns into a response. The charge happens only after every check that
can reject the request for free (framing, route, body size, token, scope), so a rejected
request never changes a balance.

A request keeps the snapshot it started with (``Snapshot.enter``/``leave``), so a reload in
the middle of it changes neither its route nor its upstream session.

When Redis fails (an error, or no answer within the client's ``redis.timeout_ms`` limits),
the route's ``on_ledger_error`` decides: ``fail_closed`` responds 503 with ``Retry-After`` and
forwards nothing; ``fail_open`` journals the charge and forwards the request with
``Ticket-Metering: deferred``, up to ``ledger.max_deferred_tickets`` per pool and process.
A charge that may have reached Redis although the request failed is refunded later by id.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping

import structlog
from aiohttp import web
from multidict import CIMultiDictProxy

from gatekeeper import metrics
from gatekeeper.appkeys import RUNTIME
from gatekeeper.auth import check_scopes
from gatekeeper.config import Route
from gatekeeper.errors import (
    BadGateway,
    BadRequest,
    GatewayTimeout,
    LedgerUnavailable,
    NotFound,
    PayloadTooLarge,
    PaymentRequired,
    ServiceUnavailable,
)
from gatekeeper.ids import new_id
from gatekeeper.journal import JournalError
from gatekeeper.ledger import ChargeRequest
from gatekeeper.metering import METERING, Metering
from gatekeeper.proxy import (
    BodyTooLarge,
    UpstreamFailure,
    check_request_framing,
    declared_too_large,
)
from gatekeeper.record import RECORD, RequestRecord
from gatekeeper.routing import normalize_path, resolve_pool
from gatekeeper.runtime import Snapshot
from gatekeeper.settlement import Settlement

log = structlog.get_logger("gatekeeper.gateway")


async def handle(request: web.Request) -> web.StreamResponse:
    """Serve one proxied request on the snapshot that is current when it starts."""
    snapshot = request.app[RUNTIME].current
    snapshot.enter()
    try:
        return await _handle(request, snapshot)
    finally:
        snapshot.leave()


async def _handle(request: web.Request, snapshot: Snapshot) -> web.StreamResponse:
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
        record.tenant_labels = snapshot.config.metrics.tenant_labels
        check_scopes(identity, route.scopes)
        candidates = resolve_pool(route, tenant, team)
        if route.cost > 0:
            settlement = await _charge(record, request.app[METERING], snapshot, route, tenant,
                                       candidates)
            pool = settlement.pool
        else:
            pool = candidates[0]

    return await _forward(request, snapshot, route, path, tenant, team, pool, settlement)


async def _charge(
    record: RequestRecord,
    metering: Metering,
    snapshot: Snapshot,
    route: Route,
    tenant: str,
    candidates: tuple[str, ...],
) -> Settlement:
    charge_request = ChargeRequest(
        tenant=tenant,
        pools=candidates,
        cost=route.cost,
        route=route.name,
        # Never derived from client input: a reused id would make the next request free.
        charge_id=new_id(),
        critical=route.critical,
        shadow=route.shadow,
    )
    if not metering.up:
        return await _ledger_failed(record, metering, snapshot, route, charge_request, sent=False)
    started = time.perf_counter()
    try:
        # The ledger's charge batch ends with TimeoutError after ``metering.deadline_s``, so
        # no request waits longer for Redis (see ``ChargeBatcher``).
        charge = await metering.ledger.charge(charge_request)
    except LedgerUnavailable as error:
        metering.failed(error)
        log.warning("ledger_unavailable", request_id=record.request_id, route=route.name,
                    charge_id=charge_request.charge_id, kind=error.kind, error=str(error))
        return await _ledger_failed(record, metering, snapshot, route, charge_request,
                                    sent=error.may_have_run)
    except TimeoutError as error:
        metering.failed(error, deadline=True)
        log.warning("ledger_timed_out", request_id=record.request_id, route=route.name,
                    charge_id=charge_request.charge_id, deadline_s=metering.deadline_s)
        return await _ledger_failed(record, metering, snapshot, route, charge_request, sent=True)
    except asyncio.CancelledError:
        # The client left while the charge was on its way; refund it if it ran.
        _refund_unknown(metering, charge_request)
        raise
    metrics.CHARGE_SECONDS.observe(time.perf_counter() - started)

    route_metrics = metrics.for_route(route.name)
    tenant_metrics = metrics.for_tenant(tenant, route.name) if record.tenant_labels else None
    record.pool = charge.pool
    record.balance = charge.balance
    if record.tenant_labels:
        metrics.POOL_BALANCE.labels(charge.pool).set(charge.balance)
    record.cost = route.cost
    if not charge.allowed:
        record.charged = 0
        route_metrics.payment_required.inc()
        if tenant_metrics is not None:
            tenant_metrics.payment_required.inc()
        raise PaymentRequired(pool=charge.pool, cost=route.cost, balance=charge.balance)
    record.charged = route.cost
    route_metrics.charged.inc(route.cost)
    if tenant_metrics is not None:
        tenant_metrics.charged.inc(route.cost)
    return Settlement(metering, route, record, route_metrics, tenant_metrics, charge.charge_id,
                      tenant, charge.pool, charge.balance, route.cost)


async def _ledger_failed(
    record: RequestRecord,
    metering: Metering,
    snapshot: Snapshot,
    route: Route,
    charge_request: ChargeRequest,
    *,
    sent: bool,
) -> Settlement:
    """Handle a charge that Redis did not take, following the route's ``on_ledger_error``.

    Args:
        sent: the charge may have reached Redis; unless it is deferred under the same id,
            it is refunded later if it ran.

    Raises:
        ServiceUnavailable: for ``fail_closed``, a full deferral bound or a journal failure.
    """
    if route.on_ledger_error == "fail_open":
        settlement = await _defer(record, metering, snapshot, route, charge_request)
        if settlement is not None:
            return settlement
    if sent:
        _refund_unknown(metering, charge_request)
    raise ServiceUnavailable("The ticket ledger is unavailable; retry shortly.")


async def _defer(
    record: RequestRecord,
    metering: Metering,
    snapshot: Snapshot,
    route: Route,
    charge_request: ChargeRequest,
) -> Settlement | None:
    """Journal a ``fail_open`` charge; None when the pool's deferral bound is reached."""
    route_metrics = metrics.for_route(route.name)
    limit = snapshot.config.ledger.max_deferred_tickets
    try:
        deferred = await metering.defer_charge(charge_request, limit)
    except JournalError as error:
        log.error("deferral_failed", request_id=record.request_id, route=route.name,
                  charge_id=charge_request.charge_id, error=str(error))
        return None
    if not deferred:
        route_metrics.deferred_rejected.inc()
        log.warning("deferral_limit_reached", request_id=record.request_id, route=route.name,
                    pool=charge_request.pools[0], limit=limit,
                    deferred=metering.deferred.of(charge_request.pools[0]))
        return None
    tenant_metrics = (metrics.for_tenant(charge_request.tenant, route.name)
                      if record.tenant_labels else None)
    route_metrics.fail_open.inc()
    route_metrics.charged.inc(route.cost)
    if tenant_metrics is not None:
        tenant_metrics.charged.inc(route.cost)
    record.pool = charge_request.pools[0]
    record.cost = route.cost
    record.charged = route.cost
    record.metering = "deferred"
    return Settlement(metering, route, record, route_metrics, tenant_metrics,
                      charge_request.charge_id, charge_request.tenant, charge_request.pools[0],
                      None, route.cost, deferred=True)


def _refund_unknown(metering: Metering, charge_request: ChargeRequest) -> None:
    metering.later("refund", charge_request.tenant, charge_request.charge_id,
                   charge_request.route, charge_request.cost, unknown_outcome=True)


async def _forward(
    request: web.Request,
    snapshot: Snapshot,
    route: Route,
    path: str,
    tenant: str | None,
    team: str | None,
    pool: str | None,
    settlement: Settlement | None,
) -> web.StreamResponse:
    record = request[RECORD]
    on_headers = settlement.on_headers if settlement else _HeaderTimer(record)
    record.start_upstream()
    try:
        response = await snapshot.forwarder.forward(
            request, route=route, path=path, tenant=tenant, team=team, pool=pool,
            on_headers=on_headers,
        )
    except UpstreamFailure as failure:
        _stop_upstream(record, route)
        await _refund_failure(record, settlement, route, failure.kind)
        headers = settlement.headers() if settlement else {}
        if failure.kind == "timeout":
            raise GatewayTimeout("The upstream sent no response headers in time.",
                                 headers=headers) from failure
        raise BadGateway("The upstream could not be reached.", headers=headers) from failure
    except BodyTooLarge as exc:
        _stop_upstream(record, route)
        if settlement:
            await settlement.refund("body_too_large")
        raise PayloadTooLarge("The request body is larger than this route accepts.",
                              headers=settlement.headers() if settlement else {}) from exc
    except BadRequest as error:
        # An invalid WebSocket handshake is rejected before anything reaches the upstream.
        _stop_upstream(record, route)
        if settlement:
            await settlement.refund("bad_request")
            error.headers.update(settlement.headers())
        raise
    _stop_upstream(record, route)
    if settlement:
        record.charged = settlement.cost
        record.balance = settlement.balance
    return response


def _stop_upstream(record: RequestRecord, route: Route) -> None:
    """End the upstream timing; the histogram gets the time until headers or failure."""
    record.stop_upstream()
    if record.upstream_started is None:
        return
    ended = record.upstream_headers_at or time.perf_counter()
    metrics.for_route(route.name).upstream_seconds.observe(ended - record.upstream_started)


async def _refund_failure(record: RequestRecord, settlement: Settlement | None, route: Route,
                          kind: str) -> None:
    log.warning("upstream_failed", request_id=record.request_id, kind=kind, route=route.name)
    if settlement and kind in route.refund_on:
        await settlement.refund(kind)


class _HeaderTimer:
    """``on_headers`` for uncharged requests: notes when the upstream's headers arrived."""

    __slots__ = ("record",)

    def __init__(self, record: RequestRecord) -> None:
        self.record = record

    async def __call__(self, status: int, headers: CIMultiDictProxy[str]) -> Mapping[str, str]:
        self.record.upstream_headers_at = time.perf_counter()
        return {}

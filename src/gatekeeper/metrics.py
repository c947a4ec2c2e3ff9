"""Prometheus metrics of the gateway, and the ``/metrics`` page of the admin listener.

Map of the module:

- Metric families are module globals; their names, units and labels are listed in
  docs/operations.md.
- ``for_route`` returns the label children of one route, created once and then reused, so
  the request path never formats labels. ``for_tenant`` does the same for per-tenant series,
  which exist only with ``metrics.tenant_labels: true``.
- ``render`` writes the text exposition format. With several workers it sums the values of
  every worker process (prometheus-client multiprocess mode).
- The request path counts into ``BufferedCounter`` and ``BufferedHistogram``: plain numbers in
  this process, because every update of a multiprocess value checks the pid and writes a
  shared file. ``fold`` adds them to the metric families. It runs every ``FOLD_INTERVAL_S``
  (``fold_periodically``), before each render and at shutdown, so a scrape shows another
  worker's requests at most ``FOLD_INTERVAL_S`` late.

NOTE: prometheus-client chooses where values live when it is first imported. So the
supervisor puts ``PROMETHEUS_MULTIPROC_DIR`` in each worker's environment before the worker
starts. Setting it later in a running process has no effect.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from bisect import bisect_left
from collections.abc import AsyncIterator

from aiohttp import web
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import choose_encoder
from prometheus_client.multiprocess import MultiProcessCollector

MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"
# Seconds between two folds of the buffered request-path metrics.
FOLD_INTERVAL_S = 0.5

# Label value for requests that matched no route (404, or rejected before matching). Route
# names start with a letter or digit, so no route can be called this.
UNMATCHED = "_unmatched"
STATUS_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")

UPSTREAM_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
LEDGER_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)

REQUESTS = Counter("gatekeeper_requests", "Proxy responses by route and status class.",
                   ["route", "status_class"])
TICKETS_CHARGED = Counter("gatekeeper_tickets_charged",
                          "Tickets charged by route, deferred charges included.", ["route"])
TICKETS_REFUNDED = Counter("gatekeeper_tickets_refunded",
                           "Tickets given back by route (refunds and lower actual costs).",
                           ["route"])
PAYMENT_REQUIRED = Counter("gatekeeper_payment_required",
                           "Requests rejected with 402 because the pool could not pay.", ["route"])
FAIL_OPEN = Counter("gatekeeper_fail_open_requests",
                    "fail_open requests forwarded with a deferred charge while Redis failed.",
                    ["route"])
DEFERRED_REJECTED = Counter("gatekeeper_deferred_limit_rejections",
                            "fail_open requests answered 503 because their pool reached "
                            "ledger.max_deferred_tickets in this process.", ["route"])
UPSTREAM_SECONDS = Histogram("gatekeeper_upstream_duration_seconds",
                             "Time from sending a request upstream until its response headers "
                             "or its failure.", ["route"], buckets=UPSTREAM_BUCKETS_S)
LEDGER_SECONDS = Histogram("gatekeeper_ledger_duration_seconds",
                           "Duration of ledger calls made by the proxy and the journal replay.",
                           ["operation"], buckets=LEDGER_BUCKETS_S)
REPLAY_SECONDS = LEDGER_SECONDS.labels("replay")
REDIS_ERRORS = Counter("gatekeeper_redis_errors",
                       "Failed Redis calls of the proxy path and the journal replay, by kind "
                       "(timeout, connection, busy, response, script, deadline).", ["kind"])
LEDGER_UP = Gauge("gatekeeper_ledger_up",
                  "1 while the process reaches Redis, 0 while it meters through the journal.",
                  multiprocess_mode="livemin")
CONFIG_RELOADS = Counter("gatekeeper_config_reloads",
                         "Config reload attempts by result (applied, unchanged, invalid, "
                         "restart_required).", ["result"])
CONFIG_RELOAD_SUCCESS = Gauge("gatekeeper_config_last_reload_success_timestamp_seconds",
                              "Unix time of the last config load that was applied.",
                              multiprocess_mode="max")
DEFERRED_TICKETS = Gauge("gatekeeper_deferred_tickets",
                         "Tickets of deferred charges not yet replayed into Redis.",
                         multiprocess_mode="livesum")
DEFERRED_LIMIT = Gauge("gatekeeper_deferred_tickets_limit",
                       "ledger.max_deferred_tickets: the most tickets one process defers per "
                       "pool before it answers 503.", multiprocess_mode="livemax")
JOURNAL_PENDING = Gauge("gatekeeper_journal_pending_entries",
                        "Journal entries waiting to be replayed into Redis.",
                        multiprocess_mode="livesum")
JOURNAL_REPLAYED = Counter("gatekeeper_journal_replayed_entries",
                           "Journal entries replayed into Redis, by operation and result.",
                           ["operation", "result"])
DEFERRED_UNPAID = Counter("gatekeeper_deferred_unpaid_tickets",
                          "Deferred tickets dropped at replay because none of the "
                          "charge's candidate pools existed.")

TENANT_REQUESTS = Counter("gatekeeper_tenant_requests",
                          "Proxy responses by tenant, route and status class.",
                          ["tenant", "route", "status_class"])
TENANT_TICKETS_CHARGED = Counter("gatekeeper_tenant_tickets_charged",
                                 "Tickets charged by tenant and route.", ["tenant", "route"])
TENANT_TICKETS_REFUNDED = Counter("gatekeeper_tenant_tickets_refunded",
                                  "Tickets given back by tenant and route.", ["tenant", "route"])
TENANT_PAYMENT_REQUIRED = Counter("gatekeeper_tenant_payment_required",
                                  "402 responses by tenant and route.", ["tenant", "route"])
POOL_BALANCE = Gauge("gatekeeper_pool_balance_tickets",
                     "Balance of a pool as last seen by a charge or refund.", ["pool"],
                     multiprocess_mode="mostrecent")


class BufferedCounter:
    """Increments of one counter child, kept in this process until ``fold`` adds them."""

    __slots__ = ("_child", "_pending")

    def __init__(self, child: Counter) -> None:
        self._child = child
        self._pending: float = 0
        _buffered.append(self)

    def inc(self, amount: float = 1) -> None:
        self._pending += amount

    def fold(self) -> None:
        if self._pending:
            pending, self._pending = self._pending, 0
            self._child.inc(pending)


class BufferedHistogram:
    """Observations of one histogram child, kept as bucket counts until ``fold`` adds them.

    Args:
        child: the histogram's label child.
        buckets: its upper bounds without ``+Inf``, as given to the ``Histogram``.
    """

    __slots__ = ("_bounds", "_child", "_counts", "_sum")

    def __init__(self, child: Histogram, buckets: tuple[float, ...]) -> None:
        self._child = child
        self._bounds = buckets
        self._counts = [0] * (len(buckets) + 1)
        self._sum = 0.0
        _buffered.append(self)

    def observe(self, amount: float) -> None:
        # The first bound not below the amount, as Histogram.observe picks it; the last
        # slot is +Inf.
        self._counts[bisect_left(self._bounds, amount)] += 1
        self._sum += amount

    def fold(self) -> None:
        if not any(self._counts):
            return
        counts, self._counts = self._counts, [0] * len(self._counts)
        total, self._sum = self._sum, 0.0
        # NOTE: prometheus-client 0.26 has no public call that adds many observations at
        # once. These are the values Histogram.observe updates: the sum and one
        # non-cumulative count per bucket. tests/unit/test_metrics.py compares the result
        # with observe().
        self._child._sum.inc(total)
        for bucket, count in zip(self._child._buckets, counts, strict=True):
            if count:
                bucket.inc(count)


_buffered: list[BufferedCounter | BufferedHistogram] = []

CHARGE_SECONDS = BufferedHistogram(LEDGER_SECONDS.labels("charge"), LEDGER_BUCKETS_S)


def fold() -> None:
    """Add what the request path counted since the last fold to the metric families."""
    for buffered in _buffered:
        buffered.fold()


async def fold_periodically(app: web.Application) -> AsyncIterator[None]:
    """Fold every ``FOLD_INTERVAL_S`` while the app runs, and once more at cleanup."""
    task = asyncio.get_running_loop().create_task(_fold_loop())
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    fold()


async def _fold_loop() -> None:
    while True:
        await asyncio.sleep(FOLD_INTERVAL_S)
        fold()


def status_class(status: int) -> str:
    """Return ``"2xx"`` for 200 and so on; statuses outside 100-599 count as ``5xx``."""
    index = status // 100 - 1
    return STATUS_CLASSES[index] if 0 <= index < len(STATUS_CLASSES) else "5xx"


class RouteMetrics:
    """The label children of one route, bound once and buffered (see ``fold``)."""

    __slots__ = ("charged", "deferred_rejected", "fail_open", "name", "payment_required",
                 "refunded", "responses", "upstream_seconds")

    def __init__(self, name: str) -> None:
        self.name = name
        self.responses = tuple(BufferedCounter(REQUESTS.labels(name, cls))
                               for cls in STATUS_CLASSES)
        self.charged = BufferedCounter(TICKETS_CHARGED.labels(name))
        self.refunded = BufferedCounter(TICKETS_REFUNDED.labels(name))
        self.payment_required = BufferedCounter(PAYMENT_REQUIRED.labels(name))
        self.fail_open = BufferedCounter(FAIL_OPEN.labels(name))
        self.deferred_rejected = BufferedCounter(DEFERRED_REJECTED.labels(name))
        self.upstream_seconds = BufferedHistogram(UPSTREAM_SECONDS.labels(name),
                                                  UPSTREAM_BUCKETS_S)

    def count_response(self, status: int) -> None:
        index = status // 100 - 1
        self.responses[index if 0 <= index < len(STATUS_CLASSES) else 4].inc()


class TenantMetrics:
    """The label children of one tenant on one route, bound once and buffered."""

    __slots__ = ("charged", "payment_required", "refunded", "responses")

    def __init__(self, tenant: str, route: str) -> None:
        self.responses = tuple(BufferedCounter(TENANT_REQUESTS.labels(tenant, route, cls))
                               for cls in STATUS_CLASSES)
        self.charged = BufferedCounter(TENANT_TICKETS_CHARGED.labels(tenant, route))
        self.refunded = BufferedCounter(TENANT_TICKETS_REFUNDED.labels(tenant, route))
        self.payment_required = BufferedCounter(TENANT_PAYMENT_REQUIRED.labels(tenant, route))

    def count_response(self, status: int) -> None:
        index = status // 100 - 1
        self.responses[index if 0 <= index < len(STATUS_CLASSES) else 4].inc()


# NOTE: both caches grow with every route name and (tenant, route) pair seen, as the series
# they stand for do. Tenant labels suit deployments with a bounded number of tenants.
_routes: dict[str, RouteMetrics] = {}
_tenants: dict[tuple[str, str], TenantMetrics] = {}


def for_route(name: str | None) -> RouteMetrics:
    """Return the metrics of route ``name``; None stands for requests that matched no route."""
    key = name or UNMATCHED
    found = _routes.get(key)
    if found is None:
        found = _routes[key] = RouteMetrics(key)
    return found


def for_tenant(tenant: str, route: str | None) -> TenantMetrics:
    """Return the per-tenant metrics of ``tenant`` on route ``route``."""
    key = (tenant, route or UNMATCHED)
    found = _tenants.get(key)
    if found is None:
        found = _tenants[key] = TenantMetrics(*key)
    return found


def multiprocess_dir() -> str | None:
    """Return the shared metrics directory of a multi-worker gateway, or None."""
    return os.environ.get(MULTIPROCESS_ENV) or None


def render(accept: str = "") -> tuple[bytes, str]:
    """Return every metric, summed over all workers, and its content type.

    Call ``fold`` first, on the event loop's thread, to include the buffered counts.

    Args:
        accept: the scraper's ``Accept`` header. The Prometheus text format 0.0.4 is used
            unless it requests OpenMetrics.
    """
    encode, content_type = choose_encoder(accept)
    directory = multiprocess_dir()
    if directory is None:
        return encode(REGISTRY), content_type
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]  # untyped
    return encode(registry), content_type


async def metrics_handler(request: web.Request) -> web.Response:
    """Serve ``GET /metrics``; the files of every worker are read in a thread."""
    # Fold here, on the event loop's thread, which is the only one that counts.
    fold()
    body, content_type = await asyncio.to_thread(render, request.headers.get("Accept", ""))
    return web.Response(body=body, headers={"Content-Type": content_type})

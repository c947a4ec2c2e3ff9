"""The canonical log line: one record per request, filled in as the request moves along.

The middleware that creates the record logs it once when the response is done, with every
decision field (route, tenant, pool, cost, charged, balance, status, upstream time), so one line
tells an operator why a request was charged or rejected.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from gatekeeper.ids import new_id

# A client-sent request id is echoed only when it is short and plain, so it cannot inject
# anything into logs or headers.
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


def request_id_from(headers: Any) -> str:
    """Return the client's ``X-Request-Id`` when it is safe to reuse, else a new id."""
    offered = headers.get("X-Request-Id")
    if offered and _REQUEST_ID.match(offered):
        return str(offered)
    return new_id()


@dataclass(slots=True)
class RequestRecord:
    """Decision fields of one request, logged once as the canonical line."""

    request_id: str
    method: str
    path: str
    started: float = field(default_factory=time.perf_counter)
    route: str | None = None
    tenant: str | None = None
    pool: str | None = None
    # The route's price, and the tickets this request really cost after refunds and settling.
    cost: int | None = None
    charged: int | None = None
    balance: int | None = None
    status: int | None = None
    error: str | None = None
    metering: str | None = None
    upstream_started: float | None = None
    upstream_headers_at: float | None = None
    upstream_ms: float | None = None
    # Whether per-tenant metrics are on for this request (``metrics.tenant_labels``).
    tenant_labels: bool = False

    def start_upstream(self) -> None:
        self.upstream_started = time.perf_counter()

    def stop_upstream(self) -> None:
        if self.upstream_started is not None and self.upstream_ms is None:
            self.upstream_ms = round((time.perf_counter() - self.upstream_started) * 1000, 3)

    def fields(self) -> dict[str, Any]:
        """Return the record as log fields, leaving out what the request never reached."""
        duration_ms = round((time.perf_counter() - self.started) * 1000, 3)
        values: dict[str, Any] = {
            "request_id": self.request_id,
            "method": self.method,
            "path": self.path,
            "status": self.status,
            "duration_ms": duration_ms,
        }
        for name in OPTIONAL_FIELDS:
            value = getattr(self, name)
            if value is not None:
                values[name] = value
        return values


# Logged only when set, in this order.
OPTIONAL_FIELDS = ("route", "tenant", "pool", "cost", "charged", "balance", "upstream_ms",
                   "metering", "error")


RECORD: web.RequestKey[RequestRecord] = web.RequestKey("record", RequestRecord)

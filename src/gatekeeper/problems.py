"""The one place where errors become HTTP responses, and where each request is logged once.

Every proxy and admin response passes through :func:`problem_middleware`: a
:class:`~gatekeeper.errors.GatekeeperError` becomes its problem+json body and headers, an
unexpected exception becomes a logged 500 without a stack trace, and the canonical log line
is written and the response counted in ``gatekeeper_requests_total`` when the response is done.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable

import structlog
from aiohttp import web

from gatekeeper import log as logs
from gatekeeper import metrics
from gatekeeper.errors import PROBLEM_BASE, GatekeeperError
from gatekeeper.record import RECORD, RequestRecord, request_id_from

log = structlog.get_logger("gatekeeper.request")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def problem_response(error: GatekeeperError) -> web.Response:
    """Render an error as an RFC 9457 problem+json response."""
    return web.Response(
        status=error.status,
        text=json.dumps(error.problem()),
        content_type="application/problem+json",
        headers=error.headers,
    )


def _from_http_exception(exc: web.HTTPException) -> web.Response:
    body = {
        "type": PROBLEM_BASE + "http-" + str(exc.status),
        "title": exc.reason,
        "status": exc.status,
        "detail": (exc.text if exc.text and not exc.text.startswith(f"{exc.status}:")
                   else exc.reason),
    }
    headers = {k: v for k, v in exc.headers.items() if k.lower() in {"allow", "retry-after"}}
    return web.Response(status=exc.status, text=json.dumps(body),
                        content_type="application/problem+json", headers=headers)


def _internal_error(record: RequestRecord) -> web.Response:
    body = {
        "type": PROBLEM_BASE + "internal",
        "title": "Internal error",
        "status": 500,
        "detail": f"The gateway failed; quote request id {record.request_id} to the operator.",
    }
    return web.Response(status=500, text=json.dumps(body), content_type="application/problem+json")


@web.middleware
async def problem_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Create the request record, translate errors, and log the canonical line."""
    record = RequestRecord(request_id_from(request.headers), request.method, request.path)
    request[RECORD] = record
    try:
        response = await handler(request)
    except GatekeeperError as error:
        record.error = error.slug
        response = problem_response(error)
    except web.HTTPException as exc:
        response = _from_http_exception(exc)
    except asyncio.CancelledError:
        # The client went away, so no response can be sent, but the line is still logged.
        record.status = 499
        record.error = "client_disconnected"
        _count(record)
        logs.request_log.info("request", **record.fields())
        raise
    except ConnectionResetError:
        # The client closed its connection while its body was still being streamed. The
        # upstream call was aborted, and the 499 only labels the log line and metrics.
        record.error = "client_disconnected"
        response = web.Response(status=499, reason="Client Closed Request")
    except Exception:  # last resort: log with the id, respond 500 without a traceback
        log.exception("request_failed", **record.fields())
        record.error = "internal"
        response = _internal_error(record)
    record.status = response.status
    _count(record)
    logs.request_log.info("request", **record.fields())
    return response


def _count(record: RequestRecord) -> None:
    status = record.status or 500
    metrics.for_route(record.route).count_response(status)
    if record.tenant_labels and record.tenant is not None:
        metrics.for_tenant(record.tenant, record.route).count_response(status)


async def add_request_id(request: web.Request, response: web.StreamResponse) -> None:
    """Put the request id on every response, streamed ones included, just before headers go."""
    record = request.get(RECORD)
    if record is not None:
        response.headers["X-Request-Id"] = record.request_id

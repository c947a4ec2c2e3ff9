"""Record handlers: a pool's usage by hour or day, and a tenant's audit stream.

``GET /admin/v1/pools/{pool}/usage?from&to&granularity=hour|day`` and
``GET /admin/v1/audit?tenant&limit&before`` (newest first, ``next`` is the cursor for
``before``).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from aiohttp import web

from gatekeeper.admin.requests import pool_from_path
from gatekeeper.appkeys import LEDGER
from gatekeeper.errors import BadRequest, NotFound
from gatekeeper.ledger.keys import ID_PATTERN
from gatekeeper.ledger.models import ms_from_datetime
from gatekeeper.ledger.records import audit_page, usage_buckets

MAX_USAGE_RANGE = timedelta(days=366)
DEFAULT_USAGE_RANGE = timedelta(days=1)
MAX_AUDIT_LIMIT = 1000
DEFAULT_AUDIT_LIMIT = 100
# ASCII digits only: \d also matches other scripts' digits, which Redis rejects.
STREAM_ID = re.compile(r"([0-9]{1,20})-([0-9]{1,20})")
MAX_STREAM_ID_PART = 2**64 - 1


def _time_parameter(request: web.Request, name: str) -> datetime | None:
    text = request.query.get(name)
    if text is None:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise BadRequest(f"Invalid query parameter {name!r}: {text!r} is not an ISO-8601 "
                         "time such as 2025-01-31T00:00:00Z.") from None
    if moment.tzinfo is None:
        raise BadRequest(f"Invalid query parameter {name!r}: {text!r} has no time zone; "
                         "add Z for UTC.")
    return moment


async def get_usage(request: web.Request) -> web.Response:
    pool = pool_from_path(request)
    now = datetime.now(UTC)
    end = _time_parameter(request, "to") or now
    start = _time_parameter(request, "from")
    if start is None:
        try:
            start = end - DEFAULT_USAGE_RANGE
        except OverflowError:
            raise BadRequest("Invalid query parameter 'to': it leaves no room for the default "
                             "range of one day before it; pass 'from' as well.") from None
    granularity = request.query.get("granularity", "hour")
    if granularity not in ("hour", "day"):
        raise BadRequest(f"Invalid query parameter 'granularity': {granularity!r}; use hour "
                         "or day.")
    if not start < end or end - start > MAX_USAGE_RANGE:
        raise BadRequest(f"Invalid range: 'from' must be before 'to' and at most "
                         f"{MAX_USAGE_RANGE.days} days earlier.")
    ledger = request.app[LEDGER]
    if await ledger.get_pool(pool) is None:
        raise NotFound(f"Pool {pool!r} does not exist.", pool=pool)
    buckets = await usage_buckets(ledger, pool, ms_from_datetime(start), ms_from_datetime(end),
                                  granularity)
    return web.json_response({"pool": pool, "granularity": granularity, "buckets": buckets})


def _limit(request: web.Request) -> int:
    text = request.query.get("limit", str(DEFAULT_AUDIT_LIMIT))
    # isdigit() alone accepts characters such as "²" that int() rejects.
    if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= MAX_AUDIT_LIMIT:
        raise BadRequest(f"Invalid query parameter 'limit': {text!r}; use 1 to "
                         f"{MAX_AUDIT_LIMIT}.")
    return int(text)


def _before(request: web.Request) -> str | None:
    """Return the ``before`` cursor as a stream id Redis accepts, or None when absent."""
    text = request.query.get("before")
    if text is None:
        return None
    found = STREAM_ID.fullmatch(text)
    if found is None or any(int(part) > MAX_STREAM_ID_PART for part in found.groups()):
        raise BadRequest(f"Invalid query parameter 'before': {text!r}; pass the 'next' "
                         "value of the previous page.")
    milliseconds, sequence = (int(part) for part in found.groups())
    return f"{milliseconds}-{sequence}"


async def get_audit(request: web.Request) -> web.Response:
    tenant = request.query.get("tenant")
    if tenant is None or not ID_PATTERN.match(tenant):
        raise BadRequest("Query parameter 'tenant' is missing or not a valid tenant id.")
    entries, cursor = await audit_page(request.app[LEDGER], tenant, _limit(request),
                                       _before(request))
    return web.json_response({"tenant": tenant, "entries": entries, "next": cursor})


def add_routes(app: web.Application) -> None:
    app.router.add_get("/admin/v1/pools/{pool}/usage", get_usage)
    app.router.add_get("/admin/v1/audit", get_audit)

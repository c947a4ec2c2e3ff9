"""Reading the ledger's records: hourly usage counters and the audit stream.

Usage counters are hash fields ``<pool>|<hour>|<route>|<metric>`` in the tenant's usage hash,
written by the charge, refund, settle and expiry steps. Route ``*`` contains pool-level metrics:
``expired``, ``transfers_in`` and ``transfers_out`` (borrowing, auto-refill and the return of
borrowed tickets on refund). The audit stream has one entry per admin mutation.
Neither expires: gatekeeper never deletes them.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from gatekeeper.ledger.client import wrap_redis_errors
from gatekeeper.ledger.ledger import Ledger
from gatekeeper.ledger.models import iso_from_ms

HOUR_MS = 3600 * 1000
DAY_MS = 24 * HOUR_MS
POOL_METRICS = "*"
ROUTE_METRICS = ("requests", "tickets", "refunded", "refused")


def _client(ledger: Ledger) -> Any:
    # redis-py types replies as bytes | str; the ledger's client decodes them to str.
    return ledger.client


@dataclass(frozen=True, slots=True)
class UsageField:
    """One parsed usage counter field."""

    pool: str
    hour_ms: int
    route: str
    metric: str


def parse_usage_field(field: str) -> UsageField:
    """Split ``<pool>|<hour>|<route>|<metric>``; pool and route never contain ``|``."""
    pool, hour, route, metric = field.split("|")
    return UsageField(pool, int(hour), route, metric)


async def usage_buckets(ledger: Ledger, pool: str, start_ms: int, end_ms: int,
                        granularity: str) -> list[dict[str, Any]]:
    """Return per-route usage of a pool between two times, by hour or by day.

    Args:
        ledger: the ledger to read.
        pool: the pool id.
        start_ms: first hour to include (Unix ms, rounded down to the hour).
        end_ms: end of the range (Unix ms, exclusive).
        granularity: ``hour`` or ``day`` (UTC days).

    Returns:
        Buckets ``{start, route, requests, tickets, refunded, refused}`` ordered by start
        and route. ``tickets`` is net of refunds.

    Raises:
        LedgerUnavailable: when a Redis call fails or times out.
    """
    tenant = pool.split("/")[0]
    index = ledger.keys.usage_index(tenant)
    async with ledger.limit:
        with wrap_redis_errors("read_usage", tenant=tenant, pool=pool):
            members = await _client(ledger).zrangebyscore(index, start_ms - start_ms % HOUR_MS,
                                                        f"({end_ms}")
            buckets = [m for m in members if m.startswith(f"{pool}|") and
                       not m.endswith(f"|{POOL_METRICS}")]
            fields = [f"{bucket}|{metric}" for bucket in buckets for metric in ROUTE_METRICS]
            usage = ledger.keys.usage(tenant)
            values = await _client(ledger).hmget(usage, fields) if fields else []

    step = DAY_MS if granularity == "day" else HOUR_MS
    totals: dict[tuple[int, str], dict[str, int]] = defaultdict(
        lambda: dict.fromkeys(ROUTE_METRICS, 0))
    for name, value in zip(fields, values, strict=True):
        parsed = parse_usage_field(name)
        start = parsed.hour_ms - parsed.hour_ms % step
        totals[(start, parsed.route)][parsed.metric] += int(value or 0)
    return [
        {"start": iso_from_ms(start), "route": route, "requests": counts["requests"],
         "tickets": counts["tickets"] - counts["refunded"], "refunded": counts["refunded"],
         "refused": counts["refused"]}
        for (start, route), counts in sorted(totals.items())
    ]


def _audit_entry(entry_id: str, fields: dict[str, str]) -> dict[str, Any]:
    entry: dict[str, Any] = {"id": entry_id, **fields}
    for name in ("tickets", "balance", "to_balance", "debt_paid"):
        if name in entry:
            entry[name] = int(entry[name])
    if "at" in entry:
        entry["at"] = iso_from_ms(int(entry["at"]))
    if "expires_at" in entry:
        entry["expires_at"] = iso_from_ms(int(entry["expires_at"]))
    return entry


async def audit_page(ledger: Ledger, tenant: str, limit: int,
                     before: str | None) -> tuple[list[dict[str, Any]], str | None]:
    """Return up to ``limit`` audit entries of a tenant, newest first.

    Args:
        ledger: the ledger to read.
        tenant: the tenant id.
        limit: entries per page.
        before: a stream id from an earlier page's ``next``; only older entries follow.

    Returns:
        The entries and the cursor of the next page, or None on the last page.

    Raises:
        LedgerUnavailable: when a Redis call fails or times out.
    """
    if before == "0-0":
        # No entry is older than 0-0, and Redis rejects the exclusive range "(0-0".
        return [], None
    newest = "+" if before is None else f"({before}"
    async with ledger.limit:
        with wrap_redis_errors("read_audit", tenant=tenant):
            raw = await _client(ledger).xrevrange(ledger.keys.audit(tenant), newest, "-",
                                                count=limit + 1)
    entries = [_audit_entry(entry_id, fields) for entry_id, fields in raw[:limit]]
    cursor = entries[-1]["id"] if len(raw) > limit else None
    return entries, cursor

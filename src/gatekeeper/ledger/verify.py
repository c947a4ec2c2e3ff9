"""Conservation check of a tenant's pools, from the records alone.

For each pool: grants + transfers in + refunds - charges - transfers out - expired must equal
the balance. Grants and admin transfers come from the audit stream; charges, refunds,
expiry, borrowing and auto-refill from the usage counters. A balance changed outside the
scripts (or a lost record) shows up as a mismatch.
"""

from __future__ import annotations

import sys
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import structlog

from gatekeeper.errors import LedgerUnavailable
from gatekeeper.ledger.client import connect_redis, mask_url, wrap_redis_errors
from gatekeeper.ledger.keys import ID_PATTERN
from gatekeeper.ledger.ledger import Ledger
from gatekeeper.ledger.records import parse_usage_field

log = structlog.get_logger("gatekeeper.ledger.verify")


def _client(ledger: Ledger) -> Any:
    # redis-py types replies as bytes | str; the ledger's client decodes them to str.
    return ledger.client

# Sign of each usage metric in the conservation sum.
USAGE_SIGNS = {"tickets": -1, "refunded": 1, "expired": -1, "transfers_in": 1,
               "transfers_out": -1}
AUDIT_PAGE = 1000


@dataclass(frozen=True, slots=True)
class PoolCheck:
    """The conservation check of one pool."""

    pool: str
    expected: int
    balance: int

    @property
    def ok(self) -> bool:
        return self.expected == self.balance


@dataclass(frozen=True, slots=True)
class VerifyReport:
    """The checks of every pool of a tenant."""

    tenant: str
    pools: list[PoolCheck] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(check.ok for check in self.pools)


async def _audit_totals(ledger: Ledger, tenant: str) -> dict[str, int]:
    totals: dict[str, int] = defaultdict(int)
    stream = ledger.keys.audit(tenant)
    start = "-"
    while True:
        page = await _client(ledger).xrange(stream, start, "+", count=AUDIT_PAGE)
        for entry_id, entry in page:
            if entry.get("action") == "grant":
                totals[entry["pool"]] += int(entry["tickets"])
            elif entry.get("action") == "transfer":
                totals[entry["pool"]] -= int(entry["tickets"])
                totals[entry["to"]] += int(entry["tickets"])
            start = f"({entry_id}"
        if len(page) < AUDIT_PAGE:
            return totals


async def _usage_totals(ledger: Ledger, tenant: str) -> dict[str, int]:
    totals: dict[str, int] = defaultdict(int)
    async for name, value in _client(ledger).hscan_iter(ledger.keys.usage(tenant), count=1000):
        parsed = parse_usage_field(name)
        totals[parsed.pool] += USAGE_SIGNS.get(parsed.metric, 0) * int(value)
    return totals


async def verify_tenant(ledger: Ledger, tenant: str) -> VerifyReport:
    """Check conservation for every pool of ``tenant``.

    Expired grants are removed first (through ``get_pool``), so the balance and the expiry
    counters describe the same moment.

    Raises:
        ValueError: for an invalid tenant id.
        LedgerUnavailable: when a Redis call fails or times out.
    """
    if not ID_PATTERN.match(tenant):
        raise ValueError(f"invalid tenant id {tenant!r}")
    with wrap_redis_errors("verify", tenant=tenant):
        pools = sorted(await _client(ledger).smembers(ledger.keys.pools(tenant)))
    balances = {}
    for pool in pools:
        found = await ledger.get_pool(pool)
        balances[pool] = 0 if found is None else int(found["balance"])
    with wrap_redis_errors("verify", tenant=tenant):
        audit = await _audit_totals(ledger, tenant)
        usage = await _usage_totals(ledger, tenant)
    checks = [PoolCheck(pool, audit[pool] + usage[pool], balances[pool]) for pool in pools]
    report = VerifyReport(tenant, checks)
    for check in checks:
        if not check.ok:
            log.warning("ledger_conservation_failed", tenant=tenant, pool=check.pool,
                        expected=check.expected, balance=check.balance)
    return report


async def run_verify(url: str, key_prefix: str, tenant: str) -> int:
    """Verify a tenant and print one line per pool; the entry of ``gatekeeper ledger verify``.

    Returns:
        0 when every pool balances, 1 when one does not, 2 when Redis is unavailable.
    """
    try:
        client = await connect_redis(url, timeout_ms=5000, max_connections=2)
    except LedgerUnavailable as error:
        print(f"cannot reach Redis at {mask_url(url)}: {error}", file=sys.stderr)
        return 2
    ledger = Ledger(client, key_prefix=key_prefix)
    try:
        report = await verify_tenant(ledger, tenant)
    except LedgerUnavailable as error:
        print(f"verify failed: {error}", file=sys.stderr)
        return 2
    finally:
        await ledger.close()
    for check in report.pools:
        status = "ok" if check.ok else "MISMATCH"
        print(f"{check.pool}: balance {check.balance}, records {check.expected}, {status}")
    if not report.pools:
        print(f"tenant {tenant} has no pools")
    return 0 if report.ok else 1

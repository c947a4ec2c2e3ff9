"""The printed report of a benchmark run and its targets, from the run's JSON-ready dict."""

from __future__ import annotations

import math
import operator
from collections.abc import Iterator
from typing import Any

# Limits of the targets, in the units printed beside them.
THROUGHPUT_RATIO_MIN = 0.90
ADDED_P50_MAX_MS = 0.3
LEDGER_RATIO_MIN = 0.5
MATCH_MAX_US = 5.0
STREAM_GROWTH_MAX_MIB = 64.0


def _number(value: Any, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float) and abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:,.{digits}f}" if isinstance(value, float) else f"{value:,}"


def http_table(http: dict[str, Any]) -> list[str]:
    targets: dict[str, dict[str, Any]] = http.get("targets", {})
    bare = targets.get("bare aiohttp proxy", {}).get("rps")
    lines = [f"{'target':<20} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'x bare':>7} "
             f"{'CPU %':>6} {'other':>6} {'failed':>7}  tool, connections"]
    for name, result in targets.items():
        lines.append(_row(name, result, result["rps"] / bare if bare else None))
    for name, error in http.get("errors", {}).items():
        lines.append(f"{name:<20} {_short(error)}")
    lines.append("CPU % is the server's CPU time over the phase. other is the time that other "
                 "processes and interrupts took on its CPU.")
    if "counts" in http:
        verdict = "yes" if http["counts"] else "NO"
        lines.append(f"Run counts: {verdict} (upstream alone = {http['upstream_over_bare']:.1f} x "
                     "the bare proxy; at least 2 x is required)")
    for key, label in (("fixed_rate", "half the bare proxy's max"),
                       ("fixed_rate_gatekeeper_half", "half gatekeeper's max")):
        fixed = http.get(key)
        if not fixed:
            continue
        lines.append("")
        lines.append(f"Fixed rate {fixed['rate']:,.0f} req/s ({label}), "
                     f"{fixed['connections']} connections, bench/loadgen.py:")
        lines += [_row(name, result, None) for name, result in fixed["phases"].items()]
        lines.append(f"gatekeeper adds {fixed['added_p50_ms']:.3f} ms to the median")
    return lines


def _short(error: str) -> str:
    """Return the first and last line of a long error; the JSON file keeps all of it."""
    lines = error.strip().splitlines()
    return lines[0] if len(lines) < 2 else f"{lines[0]} ... {lines[-1]}"


def _row(name: str, result: dict[str, Any], ratio: float | None) -> str:
    return (f"{name:<20} {_number(result['rps']):>9} {_number(result['p50_ms']):>8} "
            f"{_number(result['p99_ms']):>8} {_number(ratio):>7} "
            f"{_number(result.get('server_cpu_percent'), 0):>6} "
            f"{_number(result.get('other_on_server_cpu_percent'), 0):>6} {result['failed']:>7}  "
            f"{result['tool']}, {result['connections']}")


def other_lines(results: dict[str, Any]) -> Iterator[str]:
    ledger = results.get("ledger", {})
    if "ledger" in ledger:
        rate = ledger["ledger"]
        yield (f"Ledger.charge: {rate['charges_per_s']:,.0f} charges/s from one process, "
               f"{rate['concurrency']} concurrent, mean batch {rate['mean_batch']:.0f}")
    if "redis_benchmark" in ledger:
        bench = ledger["redis_benchmark"]
        yield (f"redis-benchmark EVALSHA charge.lua: {bench['calls_per_s']:,.0f} calls/s "
               f"(-c {bench['clients']} -n {bench['requests']})")
    routing = results.get("routing", {})
    if "normalize_and_match_us" in routing:
        yield (f"Routing, {routing['routes']:,} routes: {routing['normalize_and_match_us']:.2f} µs "
               f"per request (normalize_path + match), {routing['match_only_us']:.2f} µs match "
               "alone")
    memory = results.get("memory", {})
    if "bytes_per_pool_with_grant" in memory:
        yield (f"Redis memory: {memory['bytes_per_pool_with_grant']:,.0f} bytes per pool with one "
               f"grant, {memory['bytes_per_pool_after_one_charge']:,.0f} after one charge "
               f"({memory['pools']:,} pools)")
        by_key = ", ".join(f"{kind} {size:,}" for kind, size in
                           sorted(memory.get("one_pool_bytes_by_key", {}).items(),
                                  key=lambda item: -item[1]))
        yield f"  MEMORY USAGE of one tenant's keys, bytes: {by_key}"
    stream = results.get("stream", {})
    size = f"{stream.get('bytes', 0) / 1024**3:g} GiB"
    for proxy in ("bare aiohttp proxy", "gatekeeper"):
        figures = stream.get(proxy, {})
        for direction in ("upload", "download"):
            if "error" in figures:
                yield f"Streaming through {proxy}: not measured: {_short(figures['error'])}"
                break
            if direction in figures:
                transfer = figures[direction]
                yield (f"Streaming {size} {direction} through {proxy}: "
                       f"RSS +{transfer['growth_mib']:.1f} MiB "
                       f"(peak {transfer['rss_peak_mib']:.0f} MiB), "
                       f"{transfer['mib_per_s']:.0f} MiB/s")
    for suite, body in results.items():
        if isinstance(body, dict) and "error" in body:
            yield f"{suite}: not measured: {_short(body['error'])}"


def profile_lines(profile: dict[str, Any] | None) -> list[str]:
    if not profile:
        return []
    if "error" in profile:
        return [f"Profile: not measured: {_short(profile['error'])}"]
    if profile.get("tool") != "py-spy":
        return [f"Profile: {profile.get('tool')} report in {profile.get('file')}",
                f"  (py-spy failed: {_short(str(profile.get('py_spy_error')))})"]
    proxies: dict[str, dict[str, Any]] = profile["proxies"]
    names = list(proxies)
    lines = [f"Profile: py-spy at {profile['rate_hz']} Hz for {profile['duration_s']:g} s per "
             "proxy; CPU µs per request, by the innermost frame's package:"]
    packages: list[str] = []
    for figures in proxies.values():
        packages += [name for name, _ in figures.get("by_package_us", [])[:8]
                     if name not in packages]
    lines.append(f"  {'package':<28}" + "".join(f"{name:>20}" for name in names))
    for package in packages:
        cells = [dict(proxies[name].get("by_package_us", [])).get(package) for name in names]
        lines.append(f"  {package:<28}" + "".join(f"{_number(cell, 1):>20}" for cell in cells))
    totals = [proxies[name].get("us_per_request") for name in names]
    lines.append(f"  {'total':<28}" + "".join(f"{_number(total, 1):>20}" for total in totals))
    gateway = proxies.get("gatekeeper", {})
    if gateway.get("gatekeeper_inclusive_us"):
        inclusive = gateway["gatekeeper_inclusive_us"][:10]
        lines.append("  gatekeeper functions, inclusive µs per request:")
        lines += [f"    {value:6.1f}  {name}" for name, value in inclusive]
        lines.append("  gatekeeper process, self µs per request:")
        lines += [f"    {value:6.1f}  {name}" for name, value in gateway["self_us"][:10]]
    return lines


COMPARISONS = {">=": operator.ge, "<=": operator.le, "<": operator.lt}


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Evaluate every target; a target without data is SKIP with the reason."""
    http = results.get("http", {})
    rows = http.get("targets", {})
    checks: list[dict[str, Any]] = []

    def add(name: str, value: float | None, comparison: str, limit: float, unit: str,
            missing: str) -> None:
        if value is None:
            checks.append({"target": name, "status": "SKIP", "reason": missing})
            return
        passed = COMPARISONS[comparison](value, limit)
        checks.append({"target": name, "status": "PASS" if passed else "FAIL",
                       "value": value, "comparison": comparison, "limit": limit, "unit": unit})

    bare, gate = rows.get("bare aiohttp proxy"), rows.get("gatekeeper")
    add("gatekeeper throughput vs bare proxy",
        gate["rps"] / bare["rps"] if bare and gate else None, ">=", THROUGHPUT_RATIO_MIN, "x",
        "gatekeeper or the bare proxy was not measured")
    fixed = http.get("fixed_rate")
    add("added median latency at half the bare proxy's max rate",
        fixed["added_p50_ms"] if fixed else None, "<=", ADDED_P50_MAX_MS, "ms",
        "fixed-rate phases did not run")
    ledger = results.get("ledger", {})
    ledger_ratio = None
    if "ledger" in ledger and "redis_benchmark" in ledger:
        ledger_ratio = (ledger["ledger"]["charges_per_s"]
                        / ledger["redis_benchmark"]["calls_per_s"])
    add("Ledger.charge rate vs redis-benchmark EVALSHA", ledger_ratio, ">=", LEDGER_RATIO_MIN,
        "x", "the ledger or redis-benchmark was not measured")
    add("normalize_path + match per request, 10,000 routes",
        results.get("routing", {}).get("normalize_and_match_us"), "<=", MATCH_MAX_US, "us",
        "routing was not measured")
    stream = results.get("stream", {}).get("gatekeeper", {})
    for direction in ("upload", "download"):
        add(f"gatekeeper RSS growth, 1 GiB {direction}",
            stream.get(direction, {}).get("growth_mib"), "<", STREAM_GROWTH_MAX_MIB, "MiB",
            "streaming through gatekeeper was not measured")
    return checks


def target_lines(checks: list[dict[str, Any]]) -> list[str]:
    lines = []
    for check in checks:
        if check["status"] == "SKIP":
            lines.append(f"SKIP  {check['target']}: {check['reason']}")
        else:
            lines.append(f"{check['status']}  {check['target']}: {check['value']:.3f} "
                         f"{check['unit']} (target {check['comparison']} {check['limit']:g})")
    return lines

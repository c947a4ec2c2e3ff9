"""Side-by-side HTTP phases: the upstream alone, the bare proxy, gatekeeper and nginx.

Every target gets the same load tool, connection count and duration. The server under test
runs alone on CPU 0; for the upstream's own phase the upstream moves to CPU 0 and back.
A run counts only when the upstream alone is at least twice as fast as the bare proxy.
Otherwise the proxies wait on the upstream, and their figures measure the upstream.

After the maximum-rate phases, the bare proxy and gatekeeper each get a fixed-rate phase at
half of the bare proxy's maximum rate, and the difference of their medians is the latency
that gatekeeper adds.
"""

from __future__ import annotations

import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import gatekeeper_proc
import nginx_conf
from load import LoadResult, run_load
from procs import (
    HELPER_CPU,
    SUT_CPU,
    Processes,
    cpu_busy_seconds,
    cpu_seconds,
    free_port,
    repin,
    wait_for_idle_cpu,
    wait_for_port,
)
from upstream import BODY

BENCH_DIR = Path(__file__).parent
UPSTREAM = "upstream"
BARE = "bare aiohttp proxy"
GATEKEEPER = "gatekeeper"
NGINX = "nginx proxy_pass"
# Enough tickets for every phase of a run at any plausible rate.
GRANT_TICKETS = 10**12


@dataclass
class Target:
    """One server a phase loads: where to send requests and which process to pin."""

    name: str
    url: str
    pid: int
    headers: dict[str, str] = field(default_factory=dict)
    note: str = ""


@dataclass
class HttpOptions:
    connections: int
    duration_s: float
    warmup_s: float
    rate_connections: int
    force_loadgen: bool
    use_nginx: bool
    rounds: int = 1
    quiet_wait_s: float = 30.0
    max_other_percent: float = 15.0
    attempts: int = 3


def start_upstream(processes: Processes, work_dir: Path, use_nginx: bool) -> Target:
    """Start the fast upstream on the helper CPU: nginx static when allowed, else Python."""
    port = free_port()
    if use_nginx and nginx_conf.nginx_binary():
        directory = work_dir / "nginx-upstream"
        command = nginx_conf.write_config(directory, nginx_conf.static_config(directory, port))
        note = "nginx static response, 1 worker"
    else:
        command = [sys.executable, str(BENCH_DIR / "upstream.py"), "fast", "--port", str(port)]
        note = "bench/upstream.py raw uvloop responder"
    process = processes.start("upstream", command, cpu=HELPER_CPU)
    wait_for_port(port, process)
    return Target(UPSTREAM, f"http://127.0.0.1:{port}/", process.pid, note=note)


def start_bare_proxy(processes: Processes, upstream: Target) -> Target:
    port = free_port()
    command = [sys.executable, str(BENCH_DIR / "bare_proxy.py"), "--port", str(port),
               "--upstream", upstream.url]
    process = processes.start("bare-proxy", command, cpu=SUT_CPU)
    wait_for_port(port, process)
    return Target(BARE, f"http://127.0.0.1:{port}/", process.pid, note="bench/bare_proxy.py")


def start_nginx_proxy(processes: Processes, work_dir: Path, upstream: Target) -> Target:
    port = free_port()
    upstream_port = int(upstream.url.rstrip("/").rsplit(":", 1)[1])
    directory = work_dir / "nginx-proxy"
    config = nginx_conf.proxy_config(directory, port, upstream_port)
    process = processes.start("nginx-proxy", nginx_conf.write_config(directory, config),
                              cpu=SUT_CPU)
    wait_for_port(port, process)
    return Target(NGINX, f"http://127.0.0.1:{port}/", process.pid,
                  note="1 worker, keep-alive pool to the upstream")


def start_gatekeeper(
    processes: Processes, work_dir: Path, redis_url: str, upstream: Target
) -> Target:
    gateway = gatekeeper_proc.start_gateway(processes, work_dir, redis_url, upstream.url)
    gateway.grant(GRANT_TICKETS)
    headers = {"Authorization": f"Bearer {gatekeeper_proc.bearer_token()}"}
    return Target(GATEKEEPER, gateway.proxy_url + "/", gateway.pid, headers,
                  note="python -m gatekeeper serve, JWT HS256 + charge + proxy")


def check_target(target: Target) -> None:
    """Send one request and require a 200 with the upstream's body.

    Raises:
        RuntimeError: the target returned another status or body.
    """
    request = urllib.request.Request(target.url, headers=target.headers)
    with urllib.request.urlopen(request, timeout=10) as response:
        body = response.read()
        if response.status != 200 or body != BODY:
            raise RuntimeError(f"{target.name} returned HTTP {response.status} with body "
                           f"{body[:200]!r}; expected 200 with {BODY!r}")


def with_server_cpu(target: Target, phase: Callable[[], LoadResult],
                    options: HttpOptions) -> LoadResult:
    """Run ``phase`` on a quiet CPU; repeat it while other work disturbed it.

    A phase counts as disturbed when other processes and interrupts took more than
    ``options.max_other_percent`` of the server's CPU. After ``options.attempts`` tries
    the least disturbed result is kept.
    """
    results = []
    for _attempt in range(options.attempts):
        result = _measure_cpu(target, phase, options)
        results.append(result)
        if (result.other_on_server_cpu_percent or 0.0) <= options.max_other_percent:
            break
        print(f"    other work took {result.other_on_server_cpu_percent:.0f} % of the CPU "
              "under test; measuring again", flush=True)
    best = min(results, key=lambda result: result.other_on_server_cpu_percent or 0.0)
    best.attempts = len(results)
    return best


def _measure_cpu(target: Target, phase: Callable[[], LoadResult],
                 options: HttpOptions) -> LoadResult:
    busy_before = wait_for_idle_cpu(SUT_CPU, options.quiet_wait_s)
    server_before, cpu_before = cpu_seconds(target.pid), cpu_busy_seconds(SUT_CPU)
    wall_before = time.monotonic()
    result = phase()
    wall = time.monotonic() - wall_before
    server = cpu_seconds(target.pid) - server_before
    result.server_cpu_percent = 100 * server / wall
    other = cpu_busy_seconds(SUT_CPU) - cpu_before - server
    result.other_on_server_cpu_percent = 100 * max(0.0, other) / wall
    result.busy_before_percent = busy_before
    return result


def measure_max_rate(target: Target, upstream: Target, options: HttpOptions) -> LoadResult:
    """Run one closed-loop phase; the upstream's own phase moves it to the CPU under test."""
    if target is upstream:
        repin(upstream.pid, SUT_CPU)
    try:
        return with_server_cpu(target, lambda: run_load(
            target.url, connections=options.connections, duration_s=options.duration_s,
            warmup_s=options.warmup_s, headers=target.headers,
            force_loadgen=options.force_loadgen,
        ), options)
    finally:
        if target is upstream:
            repin(upstream.pid, HELPER_CPU)


def measure_fixed_rate(target: Target, rate: float, options: HttpOptions) -> LoadResult:
    return with_server_cpu(target, lambda: run_load(
        target.url, connections=options.rate_connections, duration_s=options.duration_s,
        warmup_s=options.warmup_s, headers=target.headers, rate=rate,
    ), options)


def run_http_suite(
    processes: Processes,
    work_dir: Path,
    redis_url: str,
    options: HttpOptions,
    on_loaded: Callable[[dict[str, tuple[Target, LoadResult]], Target], dict[str, object]]
    | None = None,
) -> dict[str, object]:
    """Start the servers, run every phase and return the figures as a JSON-ready dict.

    Args:
        processes: owner of every server started here.
        work_dir: directory for configs.
        redis_url: the private Redis server for gatekeeper.
        options: load settings shared by every phase.
        on_loaded: called after the phases with each measured target and its max-rate
            result, by name, and the upstream's target (the profiler).
    """
    upstream = start_upstream(processes, work_dir, options.use_nginx)
    targets = [upstream, start_bare_proxy(processes, upstream)]
    errors: dict[str, str] = {}
    try:
        targets.append(start_gatekeeper(processes, work_dir, redis_url, upstream))
    except (RuntimeError, OSError, ImportError) as exc:
        errors[GATEKEEPER] = f"not measured: {exc}"
    if options.use_nginx and nginx_conf.nginx_binary():
        targets.append(start_nginx_proxy(processes, work_dir, upstream))
    elif options.use_nginx:
        errors[NGINX] = "not measured: nginx is not installed"
    else:
        errors[NGINX] = "not measured: --no-nginx was given"

    by_name = {target.name: target for target in targets}
    healthy = []
    for target in targets:
        try:
            check_target(target)
            healthy.append(target)
        except (OSError, RuntimeError) as exc:
            errors[target.name] = f"not measured: {exc}"
    # Rounds interleave the targets, so a burst of noise from other processes hits one round
    # of each target rather than every phase of one target. The fastest round is kept.
    rounds: dict[str, list[LoadResult]] = {target.name: [] for target in healthy}
    for round_number in range(1, options.rounds + 1):
        for target in healthy:
            print(f"  {target.name}: {options.duration_s:g} s at max rate, round "
                  f"{round_number} ...", flush=True)
            rounds[target.name].append(measure_max_rate(target, upstream, options))
    results = {name: max(done, key=lambda result: result.rps) for name, done in rounds.items()}

    summary: dict[str, object] = {
        "targets": {name: {**result.as_dict(), "note": by_name[name].note,
                           "rps_per_round": [one.rps for one in rounds[name]]}
                    for name, result in results.items()},
        "errors": errors,
    }
    if UPSTREAM in results and BARE in results:
        ratio = results[UPSTREAM].rps / results[BARE].rps
        summary["upstream_over_bare"] = ratio
        summary["counts"] = ratio >= 2.0
    if BARE in results and GATEKEEPER in results:
        summary["fixed_rate"] = _fixed_rate_phases(by_name, results[BARE].rps / 2, options)
        if results[GATEKEEPER].rps < results[BARE].rps:
            # At half the bare proxy's rate gatekeeper may be saturated, and then its median
            # is mostly queueing. At half its own rate the difference is per-request work.
            summary["fixed_rate_gatekeeper_half"] = _fixed_rate_phases(
                by_name, results[GATEKEEPER].rps / 2, options
            )
    if on_loaded is not None and GATEKEEPER in results:
        measured = {name: (by_name[name], result) for name, result in results.items()}
        summary["profile"] = on_loaded(measured, upstream)
    return summary


def _fixed_rate_phases(
    by_name: dict[str, Target], rate: float, options: HttpOptions
) -> dict[str, object]:
    phases = {}
    for name in (BARE, GATEKEEPER):
        print(f"  {name}: {options.duration_s:g} s at {rate:.0f} requests/s ...", flush=True)
        phases[name] = measure_fixed_rate(by_name[name], rate, options)
    return {
        "rate": rate,
        "connections": options.rate_connections,
        "phases": {name: result.as_dict() for name, result in phases.items()},
        "added_p50_ms": phases[GATEKEEPER].p50_ms - phases[BARE].p50_ms,
    }

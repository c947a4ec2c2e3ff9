"""``make bench``: start every server, measure, print one report and save it as JSON.

Suites (``--suites``, default all):

- ``routing``: matching time with 10,000 routes.
- ``memory``: Redis bytes per pool.
- ``ledger``: Ledger.charge rate against redis-benchmark on the same script.
- ``http``: upstream, bare proxy, gatekeeper and nginx side by side, then fixed-rate latency.
- ``profile``: py-spy on gatekeeper under the same load, after the http phases.
- ``stream``: gateway RSS during 1 GiB transfers.

Every server is started here on 127.0.0.1 and stopped at the end, also on errors. A private
Redis-compatible server comes from the embedded binary. The gateway's code is copied from
``src/gatekeeper`` at the start, so every process of a run measures the same code. Results go to
``bench/results/bench-<UTC time>.json`` and ``bench/results/latest.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import http_suite
import profile_suite
import report
import stream_suite
from gatekeeper.embedded import EmbeddedRedis
from load import LoadResult
from procs import (
    HELPER_CPU,
    SUT_CPU,
    Processes,
    can_pin,
    cpu_split,
    pinned,
    repin,
    wait_for_idle_cpu,
)

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
SUITES = ("routing", "memory", "ledger", "http", "profile", "stream")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Start every server, measure gatekeeper beside a bare proxy and nginx, "
                    "print one report and save it as JSON under bench/results."
    )
    parser.add_argument("--suites", default=",".join(SUITES),
                        help=f"comma-separated suites to run (default: {','.join(SUITES)})")

    load = parser.add_argument_group("load phases")
    load.add_argument("--duration", type=float, default=10.0,
                        help="seconds measured per load phase (default 10)")
    load.add_argument("--warmup", type=float, default=2.0,
                        help="seconds of unrecorded load before each phase (default 2)")
    load.add_argument("--connections", type=int, default=64,
                        help="keep-alive connections in max-rate phases (default 64)")
    load.add_argument("--rounds", type=int, default=1,
                        help="max-rate rounds per target, interleaved; the fastest is kept "
                             "(default 1)")
    load.add_argument("--rate-connections", type=int, default=32,
                        help="connections in fixed-rate phases (default 32)")
    load.add_argument("--quiet-wait", type=float, default=30.0,
                      help="seconds to wait before each suite and phase for other work to "
                           "leave the CPU under test below 10%% busy (default 30)")
    load.add_argument("--attempts", type=int, default=3,
                      help="runs of a phase at most while other work takes over 15%% of the "
                           "CPU under test; the least disturbed is kept (default 3)")
    load.add_argument("--loadgen", action="store_true",
                        help="use bench/loadgen.py even when wrk is installed")
    load.add_argument("--no-nginx", action="store_true",
                        help="use neither nginx as upstream nor the nginx proxy phase")

    parser.add_argument("--stream-bytes", type=int, default=stream_suite.GIB,
                        help="bytes per streaming transfer (default 1 GiB)")
    parser.add_argument("--results-dir", type=Path, default=BENCH_DIR / "results",
                        help="where the JSON results go (default bench/results)")
    parser.add_argument("--keep-work-dir", action="store_true",
                        help="keep configs and server logs in the temporary directory")
    args = parser.parse_args()

    args.suites = [name.strip() for name in args.suites.split(",") if name.strip()]
    unknown = sorted(set(args.suites) - set(SUITES))
    if unknown:
        parser.error(f"unknown suites {unknown}; choose from {', '.join(SUITES)}")
    if "profile" in args.suites and "http" not in args.suites:
        # The profiler samples the gateway of the http suite under that suite's load.
        args.suites.append("http")
    return args


def machine() -> dict[str, Any]:
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()

    def first(field: str) -> str:
        return next((line.split(":", 1)[1].strip() for line in cpuinfo
                     if line.startswith(field)), "unknown")

    mem_kib = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                   if line.startswith("MemTotal:"))
    return {
        "nproc": os.cpu_count(),
        "cpu_model": first("model name"),
        "cpu_mhz": first("cpu MHz"),
        "virtual_machine": "hypervisor" in first("flags").split(),
        "memory_gib": round(mem_kib / 1024**2, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "load_average_at_start": os.getloadavg(),
        "tools": {name: _version(name, flag) for name, flag in
                  (("wrk", "-v"), ("nginx", "-v"), ("redis-benchmark", "--version"))},
        "commit": _git("rev-parse", "--short", "HEAD"),
        "uncommitted_changes": bool(_git("status", "--porcelain", "--untracked-files=no")),
    }


def _version(tool: str, flag: str) -> str | None:
    binary = shutil.which(tool) or shutil.which(tool, path="/usr/sbin")
    if binary is None:
        return None
    done = subprocess.run([binary, flag], capture_output=True, text=True, check=False)
    return (done.stdout + done.stderr).strip().splitlines()[0] if done.stdout + done.stderr else ""


def _git(*args: str) -> str:
    done = subprocess.run(["git", *args], capture_output=True, text=True, check=False,
                          cwd=REPO_DIR)
    return done.stdout.strip()


def snapshot_source(work_dir: Path) -> str:
    """Copy ``src/gatekeeper`` into the work directory and put it first on PYTHONPATH.

    Every gateway, ledger and routing process of the run then measures the same code, even
    when files in the working tree change during the run.

    Returns:
        A SHA-256 prefix of the copied files, which names the code that was measured.
    """
    source = REPO_DIR / "src" / "gatekeeper"
    copy = work_dir / "src" / "gatekeeper"
    shutil.copytree(source, copy, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    digest = hashlib.sha256()
    for path in sorted(copy.rglob("*")):
        if path.is_file():
            digest.update(str(path.relative_to(copy)).encode())
            digest.update(path.read_bytes())
    os.environ["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(copy.parent), os.environ.get("PYTHONPATH")])
    )
    return digest.hexdigest()[:16]


def run_script(log_dir: Path, name: str, arguments: list[str], timeout_s: float) -> Any:
    """Run a bench script on the CPU under test and return the JSON it prints last."""
    command = pinned([sys.executable, str(BENCH_DIR / arguments[0]), *arguments[1:]], SUT_CPU)
    done = subprocess.run(command, capture_output=True, text=True, check=False,
                          timeout=timeout_s)
    (log_dir / f"{name}.log").write_text(done.stderr)
    if done.returncode != 0:
        raise RuntimeError(f"{arguments[0]} failed with code {done.returncode}: "
                           f"{done.stderr.strip().splitlines()[-1:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_suites(args: argparse.Namespace, work_dir: Path, results: dict[str, Any]) -> None:
    with Processes(work_dir) as processes:
        redis = EmbeddedRedis(work_dir / "redis")
        redis.start()
        try:
            if redis.process is not None:
                repin(redis.process.pid, HELPER_CPU)
            for suite in args.suites:
                if suite == "profile" and "http" in args.suites:
                    continue  # runs inside the http suite, on its loaded gateway
                print(f"{suite} ...", flush=True)
                wait_for_idle_cpu(SUT_CPU, args.quiet_wait)
                try:
                    results[suite] = run_suite(suite, args, processes, work_dir, redis.url)
                    if suite == "http" and "profile" in results[suite]:
                        results["profile"] = results[suite].pop("profile")
                except (RuntimeError, OSError, ValueError, subprocess.SubprocessError) as exc:
                    results[suite] = {"error": str(exc)}
                    print(f"  {suite} failed: {exc}", flush=True)
        finally:
            redis.stop()


def run_suite(suite: str, args: argparse.Namespace, processes: Processes, work_dir: Path,
              redis_url: str) -> Any:
    if suite == "routing":
        return run_script(work_dir, suite, ["routing_bench.py"], 600)
    if suite == "memory":
        return run_script(work_dir, suite, ["ledger_bench.py", "memory", "--redis", redis_url],
                          600)
    if suite == "ledger":
        return run_script(work_dir, suite, [
            "ledger_bench.py", "charges", "--redis", redis_url, "--duration", str(args.duration),
            "--warmup", str(args.warmup)], 900)
    if suite == "stream":
        return stream_suite.run_stream_suite(processes, work_dir, redis_url, args.stream_bytes)
    options = http_suite.HttpOptions(
        connections=args.connections, duration_s=args.duration, warmup_s=args.warmup,
        rate_connections=args.rate_connections, force_loadgen=args.loadgen,
        use_nginx=not args.no_nginx, rounds=args.rounds, quiet_wait_s=args.quiet_wait,
        attempts=args.attempts,
    )

    def profile(measured: dict[str, tuple[http_suite.Target, LoadResult]],
                upstream: http_suite.Target) -> dict[str, object]:
        print("  profiling the bare proxy and gatekeeper ...", flush=True)
        profiled = [
            profile_suite.Profiled(name, target.pid, target.url, target.headers,
                                   result.cpu_us_per_request())
            for name, (target, result) in measured.items()
            if name in (http_suite.BARE, http_suite.GATEKEEPER)
        ]
        try:
            return profile_suite.profile_proxies(
                processes, work_dir, args.results_dir, profiled, args.connections,
                args.duration, restart=(redis_url, upstream.url),
            )
        except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
            print(f"  profile failed: {exc}", flush=True)
            return {"error": str(exc)}

    wants_profile = "profile" in args.suites
    return http_suite.run_http_suite(processes, work_dir, redis_url, options,
                                     on_loaded=profile if wants_profile else None)


def write_results(results: dict[str, Any], results_dir: Path) -> Path:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = results_dir / f"bench-{stamp}.json"
    text = json.dumps(results, indent=2)
    path.write_text(text)
    (results_dir / "latest.json").write_text(text)
    return path


def main() -> int:
    args = parse_args()
    args.results_dir.mkdir(parents=True, exist_ok=True)
    if can_pin():
        os.sched_setaffinity(0, {HELPER_CPU})
    work_dir = Path(tempfile.mkdtemp(prefix="gatekeeper-bench-"))
    results: dict[str, Any] = {
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "cpu_split": cpu_split(),
        "settings": {"duration_s": args.duration, "warmup_s": args.warmup,
                     "connections": args.connections, "rate_connections": args.rate_connections,
                     "rounds": args.rounds, "attempts": args.attempts,
                     "quiet_wait_s": args.quiet_wait,
                     "suites": args.suites},
    }
    print(f"CPUs: {results['cpu_split']}", flush=True)
    started = time.monotonic()
    try:
        results["machine"]["source_sha256"] = snapshot_source(work_dir)
        run_suites(args, work_dir, results)
    finally:
        if args.keep_work_dir:
            print(f"configs and server logs kept in {work_dir}")
        else:
            shutil.rmtree(work_dir, ignore_errors=True)
    results["elapsed_s"] = round(time.monotonic() - started, 1)
    results["targets"] = report.targets(results)
    path = write_results(results, args.results_dir)

    print()
    print(f"Machine: {results['machine']['nproc']} CPUs, {results['machine']['cpu_model']}, "
          f"{results['machine']['memory_gib']} GiB; {results['cpu_split']}")
    if isinstance(results.get("http"), dict) and "targets" in results["http"]:
        print("\n".join(report.http_table(results["http"])))
    print("\n".join(report.other_lines(results)))
    print("\n".join(report.profile_lines(results.get("profile"))))
    print()
    print("\n".join(report.target_lines(results["targets"])))
    print(f"\nResults: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

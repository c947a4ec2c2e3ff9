"""Profile of gatekeeper under load, from py-spy, or pyinstrument when py-spy cannot attach.

py-spy samples the bare proxy and then the gateway from outside under the same load as the
throughput phase, and writes collapsed stacks. It pauses the process for each sample.
NOTE: with ``--nonblocking`` it read stacks while they changed, and it charged 8 µs per
request to an exception constructor that ``timeit`` puts at 0.5 µs.

Each function's share of the samples, times the process's CPU time per request (from
/proc, in the max-rate phase), gives CPU microseconds per request, which compare directly
between the proxies.

The summary attributes every sample to the innermost frame's package (``aiohttp``,
``redis``, ``gatekeeper``...) and lists the functions with the most self and inclusive
time. Samples whose innermost Python frame is the event loop's ``run`` are time spent in
uvloop's C code: socket reads and writes, and callbacks that have no Python frame of their
own. Functions on nearly every stack (the entry points) are left out of the inclusive list.
Only the main thread, which runs the event loop, is counted: py-spy reports idle threads
of a thread pool as busy while it pauses the process.

When py-spy fails (no ptrace permission, for instance), a second gateway runs under
``python -m pyinstrument`` and its text report is kept instead.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import gatekeeper_proc
from load import run_load
from procs import HELPER_CPU, SUT_CPU, Processes, cpu_seconds, pinned, wait_for_idle_cpu

SAMPLE_RATE_HZ = 100
# Maximum wait for other work to leave the CPU under test before sampling.
QUIET_WAIT_S = 30.0
TOP = 15
EVENT_LOOP_LEAF = "event loop (uvloop C code)"
# Python frames that call into the event loop: a sample whose innermost frame is one of
# these was taken in the loop's C code.
EVENT_LOOP_FRAMES = (
    "Runner.run (asyncio/runners.py)",
    "run (uvloop/__init__.py)",
    "run_app (aiohttp/web.py)",
)
# Functions on at least this share of the stacks are entry points, left out of the summary.
ENTRY_POINT_SHARE = 0.99


def py_spy_binary() -> str | None:
    local = Path(sys.executable).with_name("py-spy")
    return str(local) if local.exists() else shutil.which("py-spy")


def record_py_spy(pid: int, url: str, headers: dict[str, str], connections: int,
                  duration_s: float, output: Path) -> tuple[str | None, float, float]:
    """Sample ``pid`` for ``duration_s`` under load.

    Returns:
        An error message or None, the request rate under load, and the CPU time of ``pid``
        per request in microseconds, read from /proc.
    """
    binary = py_spy_binary()
    if binary is None:
        return "py-spy is not installed", 0.0, 0.0
    command = [binary, "record", "--pid", str(pid), "--duration", f"{duration_s:g}",
               "--rate", str(SAMPLE_RATE_HZ), "--format", "raw", "--threads",
               "--output", str(output)]
    wait_for_idle_cpu(SUT_CPU, QUIET_WAIT_S)
    spy = subprocess.Popen(
        pinned(command, HELPER_CPU), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    try:
        # The load outlasts the sampling, so every sample is taken from a loaded server.
        cpu_before = cpu_seconds(pid)
        load = run_load(url, connections=connections, duration_s=duration_s + 2, warmup_s=0,
                        headers=headers)
        cpu_us = 1e6 * (cpu_seconds(pid) - cpu_before) / max(1, load.requests)
        spy_output, _ = spy.communicate(timeout=60)
    finally:
        if spy.poll() is None:
            spy.kill()
            spy.wait()
    if spy.returncode != 0 or not output.exists():
        error = f"py-spy failed with code {spy.returncode}: {spy_output.decode()[-500:]}"
        return error, 0.0, 0.0
    return None, load.rps, cpu_us


def summarize_collapsed(path: Path, cpu_us_per_request: float) -> dict[str, object]:
    """Summarize py-spy's collapsed stacks per package and function.

    Each sample's share of all samples is scaled to the process's CPU time per request,
    measured from /proc. The figures then do not depend on how py-spy decides that a
    thread is idle, for instance when the thread waits for a CPU that other processes use.

    Args:
        path: py-spy's ``--format raw`` output.
        cpu_us_per_request: CPU time of the process per request, in microseconds.

    Returns:
        Sample count, and CPU microseconds per request: in total, by the innermost
        frame's package, by function (self time) and by gatekeeper function (inclusive).
    """
    by_package: Counter[str] = Counter()
    self_time: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = other_threads = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        # With --threads, the first frame is "thread (TID): NAME".
        thread, _, stack = stack.partition(";")
        if not thread.endswith(": MainThread"):
            other_threads += count
            continue
        frames = [_function(frame) for frame in stack.split(";")]
        total += count
        leaf = frames[-1]
        if leaf in EVENT_LOOP_FRAMES:
            leaf = EVENT_LOOP_LEAF
        self_time[leaf] += count
        by_package[_package(leaf)] += count
        for function in set(frames):
            inclusive[function] += count
    if not total or cpu_us_per_request <= 0:
        return {"samples": total, "other_thread_samples": other_threads}

    us_per_sample = cpu_us_per_request / total

    def per_request(counter: Counter[str], limit: int) -> list[tuple[str, float]]:
        return [(name, round(count * us_per_sample, 1))
                for name, count in counter.most_common(limit)]

    gatekeeper_inclusive = Counter({
        name: count for name, count in inclusive.items()
        if "(gatekeeper/" in name and count < ENTRY_POINT_SHARE * total
    })
    return {
        "samples": total,
        "other_thread_samples": other_threads,
        "us_per_request": round(cpu_us_per_request, 1),
        "by_package_us": per_request(by_package, TOP),
        "self_us": per_request(self_time, TOP),
        "gatekeeper_inclusive_us": per_request(gatekeeper_inclusive, TOP),
    }


def _function(frame: str) -> str:
    """Turn ``name (path/file.py:123)`` into ``name (path/file.py)``."""
    name, _, location = frame.partition(" (")
    return f"{name} ({location.rsplit(':', 1)[0]})" if location else name


def _package(function: str) -> str:
    if function == EVENT_LOOP_LEAF:
        return function
    location = function.partition(" (")[2].rstrip(")")
    return location.split("/", 1)[0] if "/" in location else location or "unknown"


@dataclass(frozen=True)
class Profiled:
    """A loaded proxy to profile, with its CPU time per request at max rate if measured."""

    name: str
    pid: int
    url: str
    headers: dict[str, str]
    cpu_us_at_max_rate: float | None


def profile_proxies(
    processes: Processes,
    work_dir: Path,
    results_dir: Path,
    targets: list[Profiled],
    connections: int,
    duration_s: float,
    restart: tuple[str, str],
) -> dict[str, object]:
    """Profile each loaded proxy in turn with py-spy, under the same load.

    The samples' shares are scaled to each proxy's CPU time per request in the max-rate
    phase, without the profiler. py-spy's pauses at 200 Hz halved gatekeeper's rate in
    one run (1,890 to 975 requests/s), which raises the CPU time per request while it
    samples.

    Args:
        processes: owner of the pyinstrument gateway, if py-spy fails.
        work_dir: directory for that gateway's config.
        results_dir: where the collapsed stacks go.
        targets: the proxies, in the order to profile them.
        connections: keep-alive connections of the load.
        duration_s: sampling time per proxy.
        restart: (Redis URL, upstream URL) for the pyinstrument gateway.
    """
    proxies: dict[str, object] = {}
    for target in targets:
        collapsed = results_dir / f"py-spy-{target.name.replace(' ', '-')}.txt"
        error, rps, cpu_us = record_py_spy(target.pid, target.url, target.headers,
                                           connections, duration_s, collapsed)
        if error is not None:
            return {"tool": "pyinstrument", "py_spy_error": error,
                    **_pyinstrument(processes, work_dir, results_dir, connections, duration_s,
                                    restart)}
        proxies[target.name] = {
            "file": str(collapsed),
            "rps_while_sampled": rps,
            "cpu_us_while_sampled": cpu_us,
            **summarize_collapsed(collapsed, target.cpu_us_at_max_rate or cpu_us),
        }
    return {"tool": "py-spy", "rate_hz": SAMPLE_RATE_HZ, "duration_s": duration_s,
            "proxies": proxies}


# A sitecustomize module that profiles each process of the gateway, supervisor and workers
# alike, and writes one text report per process when it exits. ``python -m pyinstrument``
# would profile only the supervisor, because workers are new interpreters.
PYINSTRUMENT_HOOK = """\
import atexit
import os

from pyinstrument import Profiler

_profiler = Profiler(async_mode="disabled")
_profiler.start()


def _write_report():
    _profiler.stop()
    path = os.path.join(os.environ["GK_BENCH_PYINSTRUMENT_DIR"], f"pyinstrument-{os.getpid()}.txt")
    with open(path, "w", encoding="utf-8") as report:
        report.write(_profiler.output_text(unicode=True))


atexit.register(_write_report)
"""


def _pyinstrument(processes: Processes, work_dir: Path, results_dir: Path, connections: int,
                  duration_s: float, restart: tuple[str, str]) -> dict[str, object]:
    hook_dir = work_dir / "pyinstrument-hook"
    hook_dir.mkdir(exist_ok=True)
    (hook_dir / "sitecustomize.py").write_text(PYINSTRUMENT_HOOK, encoding="utf-8")
    python_path = os.pathsep.join(filter(None, [str(hook_dir), os.environ.get("PYTHONPATH")]))
    redis_url, upstream_url = restart
    gateway = gatekeeper_proc.start_gateway(
        processes, work_dir, redis_url, upstream_url, name="gatekeeper-pyinstrument",
        extra_env={"PYTHONPATH": python_path, "GK_BENCH_PYINSTRUMENT_DIR": str(results_dir)},
    )
    gateway.grant(10**9)
    headers = {"Authorization": f"Bearer {gatekeeper_proc.bearer_token()}"}
    run_load(gateway.proxy_url + "/", connections=connections, duration_s=duration_s,
             warmup_s=0, headers=headers)
    # Each process writes its report when it exits after SIGTERM.
    processes.stop(gateway.process)
    report = results_dir / f"pyinstrument-{gateway.pid}.txt"
    if not report.exists():
        raise RuntimeError(f"pyinstrument wrote no report for the gateway process {gateway.pid}")
    return {"file": str(report), "report_head": report.read_text().splitlines()[:60]}

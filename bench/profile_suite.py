"""Profile of gatekeeper under load, from py-spy, or pyinstrument when py-spy cannot attach.

py-spy samples the running gateway from outside (``--nonblocking``, so the gateway is never
paused) while the same load as the throughput phase runs, and writes collapsed stacks. The
summary attributes every sample to the innermost frame's package (``aiohttp``, ``redis``,
``jwt``, ``gatekeeper``...) and lists the functions with the most self and inclusive time.
Samples whose innermost Python frame is the event loop's ``run`` are time spent in uvloop's
C code: socket reads and writes, and callbacks that have no Python frame of their own.
A coroutine resumed by the event loop's C code shows only its own await chain, so the
inclusive shares of handlers are right, but those of the entry points are too low and are
left out.

When py-spy fails (no ptrace permission, for instance), a second gateway runs under
``python -m pyinstrument`` and its text report is kept instead.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import gatekeeper_proc
from load import run_load
from procs import HELPER_CPU, Processes, pinned

SAMPLE_RATE_HZ = 200
TOP = 15
EVENT_LOOP_LEAF = "event loop (uvloop C code)"
# Entry-point frames that every main-thread stack shares, so their share is not informative.
ENTRY_FILES = ("gatekeeper/__main__.py", "gatekeeper/cli.py")


def py_spy_binary() -> str | None:
    local = Path(sys.executable).with_name("py-spy")
    return str(local) if local.exists() else shutil.which("py-spy")


def record_py_spy(pid: int, url: str, headers: dict[str, str], connections: int,
                  duration_s: float, output: Path) -> str | None:
    """Sample ``pid`` for ``duration_s`` under load; return an error message or None."""
    binary = py_spy_binary()
    if binary is None:
        return "py-spy is not installed"
    command = [binary, "record", "--pid", str(pid), "--duration", f"{duration_s:g}",
               "--rate", str(SAMPLE_RATE_HZ), "--format", "raw", "--nonblocking",
               "--output", str(output)]
    spy = subprocess.Popen(
        pinned(command, HELPER_CPU), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    try:
        # The load outlasts the sampling, so every sample is taken from a loaded gateway.
        run_load(url, connections=connections, duration_s=duration_s + 2, warmup_s=0,
                 headers=headers)
        spy_output, _ = spy.communicate(timeout=60)
    finally:
        if spy.poll() is None:
            spy.kill()
            spy.wait()
    if spy.returncode != 0 or not output.exists():
        return f"py-spy failed with code {spy.returncode}: {spy_output.decode()[-500:]}"
    return None


def summarize_collapsed(path: Path) -> dict[str, object]:
    """Summarize py-spy's collapsed stacks: shares by package, top self and inclusive time."""
    by_package: Counter[str] = Counter()
    self_time: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_function(frame) for frame in stack.split(";")]
        total += count
        leaf = frames[-1]
        if leaf.startswith("Runner.run ") or leaf.startswith("run (uvloop"):
            leaf = EVENT_LOOP_LEAF
        self_time[leaf] += count
        by_package[_package(leaf)] += count
        for function in set(frames):
            inclusive[function] += count
    if not total:
        return {"samples": 0}

    def shares(counter: Counter[str], limit: int) -> list[tuple[str, float]]:
        return [(name, round(100 * count / total, 1)) for name, count in counter.most_common(limit)]

    gatekeeper_inclusive = Counter({
        name: count for name, count in inclusive.items()
        if "(gatekeeper/" in name and not name.endswith(tuple(f"({f})" for f in ENTRY_FILES))
    })
    return {
        "samples": total,
        "by_package_percent": shares(by_package, TOP),
        "self_percent": shares(self_time, TOP),
        "gatekeeper_inclusive_percent": shares(gatekeeper_inclusive, TOP),
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


def profile_gateway(
    processes: Processes,
    work_dir: Path,
    results_dir: Path,
    gateway: gatekeeper_proc.Gateway,
    url: str,
    headers: dict[str, str],
    connections: int,
    duration_s: float,
    restart: tuple[str, str],
) -> dict[str, object]:
    """Profile the loaded gateway; ``restart`` is (redis URL, upstream URL) for pyinstrument."""
    collapsed = results_dir / "gatekeeper-py-spy.txt"
    error = record_py_spy(gateway.pid, url, headers, connections, duration_s, collapsed)
    if error is None:
        return {"tool": "py-spy", "file": str(collapsed), **summarize_collapsed(collapsed)}
    return {"tool": "pyinstrument", "py_spy_error": error,
            **_pyinstrument(processes, work_dir, results_dir, connections, duration_s, restart)}


def _pyinstrument(processes: Processes, work_dir: Path, results_dir: Path, connections: int,
                  duration_s: float, restart: tuple[str, str]) -> dict[str, object]:
    report = results_dir / "gatekeeper-pyinstrument.txt"
    interpreter = (sys.executable, "-m", "pyinstrument", "-r", "text", "-o", str(report))
    redis_url, upstream_url = restart
    gateway = gatekeeper_proc.start_gateway(processes, work_dir, redis_url, upstream_url,
                                            name="gatekeeper-pyinstrument",
                                            interpreter=interpreter)
    gateway.grant(10**9)
    headers = {"Authorization": f"Bearer {gatekeeper_proc.bearer_token()}"}
    run_load(gateway.proxy_url + "/", connections=connections, duration_s=duration_s,
             warmup_s=0, headers=headers)
    # pyinstrument writes its report when the gateway exits after SIGTERM.
    processes.stop(gateway.process)
    return {"file": str(report), "report_head": report.read_text().splitlines()[:60]}

"""One load phase against one URL, with wrk when installed, else ``bench/loadgen.py``.

Both tools run pinned to the helper CPU with the same connection count and duration for
every target of a run. wrk has no fixed-rate mode, so fixed-rate phases always use
``loadgen.py``. wrk has no warm-up either: a short unrecorded wrk run comes first.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

from procs import HELPER_CPU, pinned

LOADGEN = Path(__file__).with_name("loadgen.py")
WRK_SCRIPT = Path(__file__).with_name("wrk_statuses.lua")
WRK_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


@dataclass
class LoadResult:
    """Throughput and latency of one phase; ``failed`` counts non-2xx and socket errors."""

    tool: str
    mode: str
    connections: int
    duration_s: float
    requests: int
    rps: float
    p50_ms: float
    p99_ms: float
    failed: int = 0
    # CPU time of the server under test over the phase's wall time, warm-up included, and
    # the busy time of its CPU not charged to it: interrupts, and other processes, which
    # make a run noisy.
    server_cpu_percent: float | None = None
    other_on_server_cpu_percent: float | None = None
    # How busy the server's CPU was with other work just before the phase started, and
    # how many times the phase ran because other work disturbed it.
    busy_before_percent: float | None = None
    attempts: int = 1
    details: dict[str, object] = field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        return asdict(self)

    def cpu_us_per_request(self) -> float | None:
        """Return the server's CPU time per request in microseconds, when it was measured."""
        if self.server_cpu_percent is None or not self.rps:
            return None
        return self.server_cpu_percent * 1e4 / self.rps


def wrk_available() -> bool:
    return shutil.which("wrk") is not None


def run_load(
    url: str,
    *,
    connections: int,
    duration_s: float,
    warmup_s: float,
    headers: dict[str, str] | None = None,
    rate: float | None = None,
    force_loadgen: bool = False,
) -> LoadResult:
    """Load ``url`` for ``duration_s`` seconds after ``warmup_s`` unrecorded seconds."""
    header_lines = [f"{name}: {value}" for name, value in (headers or {}).items()]
    if rate is None and wrk_available() and not force_loadgen:
        if warmup_s > 0:
            _wrk(url, connections, warmup_s, header_lines)
        return _wrk(url, connections, duration_s, header_lines)
    return _loadgen(url, connections, duration_s, warmup_s, header_lines, rate)


def _wrk(url: str, connections: int, duration_s: float, headers: list[str]) -> LoadResult:
    command = ["wrk", "-t1", f"-c{connections}", f"-d{duration_s:g}s", "--latency",
               "--timeout", "10s", "--script", str(WRK_SCRIPT)]
    for line in headers:
        command += ["-H", line]
    output = _run(pinned([*command, url], HELPER_CPU), duration_s)
    latency = _wrk_percentiles(output)
    non_2xx = _wrk_int(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    socket_errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    errors = sum(int(n) for n in socket_errors.groups()) if socket_errors else 0
    return LoadResult(
        tool="wrk",
        mode="closed loop, 1 thread",
        connections=connections,
        duration_s=duration_s,
        requests=_wrk_int(r"(\d+) requests in", output),
        rps=float(_wrk_match(r"Requests/sec:\s+([\d.]+)", output)),
        p50_ms=latency["50%"],
        p99_ms=latency["99%"],
        failed=non_2xx + errors,
        details={"percentiles_ms": latency, "non_2xx": non_2xx, "socket_errors": errors,
                 "statuses": _wrk_statuses(output)},
    )


def _wrk_percentiles(output: str) -> dict[str, float]:
    found = re.findall(r"^\s+(\d+%)\s+([\d.]+)(us|ms|s)\s*$", output, re.MULTILINE)
    if not found:
        raise RuntimeError(f"wrk printed no latency distribution:\n{output}")
    return {label: float(value) * WRK_UNITS_MS[unit] for label, value, unit in found}


def _wrk_statuses(output: str) -> dict[str, int]:
    found = re.findall(r"^status (\d+) (\d+)$", output, re.MULTILINE)
    statuses: dict[str, int] = {}
    for code, count in found:
        statuses[code] = statuses.get(code, 0) + int(count)
    return dict(sorted(statuses.items()))


def _wrk_match(pattern: str, output: str) -> str:
    found = re.search(pattern, output)
    if found is None:
        raise RuntimeError(f"wrk output has no match for {pattern!r}:\n{output}")
    return found.group(1)


def _wrk_int(pattern: str, output: str) -> int:
    found = re.search(pattern, output)
    return int(found.group(1)) if found else 0


def _loadgen(
    url: str,
    connections: int,
    duration_s: float,
    warmup_s: float,
    headers: list[str],
    rate: float | None,
) -> LoadResult:
    command = [sys.executable, str(LOADGEN), url, "--connections", str(connections),
               "--duration", str(duration_s), "--warmup", str(warmup_s)]
    if rate:
        command += ["--rate", f"{rate:.1f}"]
    for line in headers:
        command += ["--header", line]
    report = json.loads(_run(pinned(command, HELPER_CPU), warmup_s + duration_s))
    statuses = {int(code): count for code, count in report["statuses"].items()}
    failed = report["errors"] + report["unsent"] + sum(
        count for code, count in statuses.items() if not 200 <= code < 300
    )
    return LoadResult(
        tool="bench/loadgen.py",
        mode=report["mode"],
        connections=connections,
        duration_s=report["duration_s"],
        requests=report["requests"],
        rps=report["rps"],
        p50_ms=report["p50_ms"],
        p99_ms=report["p99_ms"],
        failed=failed,
        details={key: report[key] for key in
                 ("statuses", "errors", "unsent", "p90_ms", "max_ms", "dispatch_late_max_ms")},
    )


def _run(command: list[str], expected_s: float) -> str:
    # The tools stop by themselves; the timeout only catches a hung tool.
    done = subprocess.run(
        command, capture_output=True, text=True, check=False, timeout=expected_s + 60,
    )
    if done.returncode != 0:
        tool = command[3] if command[0] == "taskset" else command[0]
        raise RuntimeError(f"{tool} failed with code {done.returncode}:\n{done.stderr}")
    return done.stdout

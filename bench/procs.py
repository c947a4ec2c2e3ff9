"""Child processes of a benchmark run: start, pin to CPUs, wait for ports, stop.

Every process starts in its own session (process group), so stopping it also stops its
children (nginx workers, for instance). ``Processes`` stops whatever it started when its
``with`` block ends, also on errors and Ctrl-C.

CPU layout on a machine with two or more CPUs: the server under test runs alone on the
first CPU this process may use, and the load generator, the upstream and Redis share the
second. Further CPUs stay unused, so runs on bigger machines compare with runs on two CPUs.
With one CPU nothing is pinned.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO

# Read once at import, before run.py pins itself to the helper CPU.
ALLOWED_CPUS = sorted(os.sched_getaffinity(0))
SUT_CPU = ALLOWED_CPUS[0]
HELPER_CPU = ALLOWED_CPUS[1] if len(ALLOWED_CPUS) > 1 else ALLOWED_CPUS[0]
# A load phase starts once other work keeps the CPU under test busy less than this.
QUIET_BUSY_PERCENT = 10.0


def can_pin() -> bool:
    """Return True when there are at least two CPUs this process may run on."""
    return len(ALLOWED_CPUS) >= 2


def cpu_split() -> str:
    """Describe how the CPUs are shared, for the printed report and the JSON file."""
    if not can_pin():
        return "one CPU available: nothing pinned, every process shares it"
    tool = "taskset" if shutil.which("taskset") else "sched_setaffinity"
    return (
        f"server under test alone on CPU {SUT_CPU}; load generator, upstream and Redis "
        f"share CPU {HELPER_CPU} (pinned with {tool})"
    )


def pinned(command: Sequence[str], cpu: int) -> list[str]:
    """Prefix ``command`` with taskset so it starts on ``cpu``; unchanged when pinning is off."""
    if not can_pin() or not shutil.which("taskset"):
        return list(command)
    return ["taskset", "-c", str(cpu), *command]


def repin(pid: int, cpu: int) -> None:
    """Move every thread of ``pid`` and of its process group to ``cpu``."""
    if not can_pin():
        return
    for member in _group_members(pid):
        for task in _threads(member):
            try:
                os.sched_setaffinity(task, {cpu})
            except (ProcessLookupError, PermissionError):
                continue


def _group_members(pid: int) -> list[int]:
    """List the processes in the process group led by ``pid``."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if os.getpgid(int(entry.name)) == pid:
                members.append(int(entry.name))
        except ProcessLookupError:
            continue
    return members or [pid]


def _threads(pid: int) -> list[int]:
    try:
        return [int(task.name) for task in Path(f"/proc/{pid}/task").iterdir()]
    except FileNotFoundError:
        return []


def free_port() -> int:
    """Return a loopback TCP port that was free a moment ago."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_for_port(port: int, process: subprocess.Popen[bytes], timeout_s: float = 15.0) -> None:
    """Wait until something accepts connections on 127.0.0.1:``port``.

    Raises:
        RuntimeError: the process exited, or the port stayed closed for ``timeout_s``.
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args!r} exited with code {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout_s:.0f} s")


def cpu_seconds(pid: int) -> float:
    """Return the user plus system CPU time of ``pid``'s process group, in seconds."""
    ticks = 0
    for member in _group_members(pid):
        try:
            stat = Path(f"/proc/{member}/stat").read_text()
        except FileNotFoundError:
            continue
        # Fields after the parenthesised command name; utime and stime are fields 14 and 15.
        fields = stat.rpartition(")")[2].split()
        ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def cpu_busy_seconds(cpu: int) -> float:
    """Return the time ``cpu`` has spent busy since boot (all processes), in seconds."""
    for line in Path("/proc/stat").read_text().splitlines():
        name, *values = line.split()
        if name == f"cpu{cpu}":
            # Fields: user nice system idle iowait irq softirq steal ...
            ticks = [int(value) for value in values[:8]]
            return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")
    raise RuntimeError(f"/proc/stat has no line for cpu{cpu}")


def wait_for_idle_cpu(cpu: int, max_wait_s: float,
                      max_busy_percent: float = QUIET_BUSY_PERCENT) -> float:
    """Wait until ``cpu`` is busy less than ``max_busy_percent`` over one second.

    The bench's own servers are idle between phases, so what keeps the CPU busy then is
    other work on the machine, which would distort the next phase.

    Returns:
        The last busy percentage seen; above the limit when ``max_wait_s`` ran out.
    """
    deadline = time.monotonic() + max_wait_s
    while True:
        before = cpu_busy_seconds(cpu)
        time.sleep(1.0)
        busy = 100 * (cpu_busy_seconds(cpu) - before)
        if busy < max_busy_percent or time.monotonic() >= deadline:
            return busy


def rss_kib(pid: int) -> int:
    """Return the resident set size of ``pid`` in KiB, read from /proc/PID/status."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/{pid}/status has no VmRSS line")


class Processes:
    """The child processes of one run; ``with`` stops them all at the end.

    Args:
        log_dir: directory for each process's stdout and stderr (``<name>.log``).
    """

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self._started: list[tuple[str, subprocess.Popen[bytes], IO[bytes]]] = []

    def start(
        self,
        name: str,
        command: Sequence[str],
        *,
        cpu: int | None = None,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start ``command`` in a new process group, pinned to ``cpu`` when given."""
        log = (self.log_dir / f"{name}.log").open("wb")
        argv = pinned(command, cpu) if cpu is not None else list(command)
        process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else None,
            start_new_session=True,
        )
        self._started.append((name, process, log))
        return process

    def log_path(self, name: str) -> Path:
        return self.log_dir / f"{name}.log"

    def stop(self, process: subprocess.Popen[bytes], timeout_s: float = 15.0) -> None:
        """Send SIGTERM to the process group, then SIGKILL if it outlives ``timeout_s``."""
        for index, (_name, started, log) in enumerate(self._started):
            if started is process:
                _terminate_group(process, timeout_s)
                log.close()
                del self._started[index]
                return

    def __enter__(self) -> Processes:
        return self

    def __exit__(self, *exc_info: object) -> None:
        while self._started:
            self.stop(self._started[-1][1])


def _terminate_group(process: subprocess.Popen[bytes], timeout_s: float) -> None:
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=timeout_s)
    # The leader may be gone while children of its group still run.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()

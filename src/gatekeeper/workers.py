"""The worker processes of one supervisor: start, control messages, restart, stop.

Each worker is a new interpreter running ``gatekeeper serve --worker`` (``gatekeeper.server``).
It inherits the two listening sockets and the write end of its own pipe, on which it sends
one line per message: ``ready <version>`` once it serves, and ``reload <version>`` after an
admin reload. A worker that exits is restarted after ``RESTART_FIRST_S``; the delay doubles up
to ``RESTART_MAX_S`` while it keeps exiting within ``STABLE_AFTER_S`` of its start.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import structlog
from prometheus_client import multiprocess

from gatekeeper.metrics import multiprocess_dir
from gatekeeper.server import WORKER_ENV, WorkerSpec

log = structlog.get_logger("gatekeeper.supervisor")

TICK_S = 0.1
RESTART_FIRST_S = 0.5
RESTART_MAX_S = 30.0
# A worker that ran this long before exiting restarts after RESTART_FIRST_S again.
STABLE_AFTER_S = 30.0


@dataclass(slots=True)
class WorkerSlot:
    """One worker position: the process filling it now and its restart state."""

    index: int
    process: subprocess.Popen[bytes] | None = None
    control_fd: int | None = None
    buffer: bytes = b""
    ready: bool = False
    started_at: float = 0.0
    crashes: int = 0
    restart_at: float | None = None
    last_pid: int | None = None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


class Workers:
    """The worker processes of one supervisor.

    Args:
        count: how many workers to run.
        config_path: the operator's config file, passed on the command line.
        spec_for: builds the ``WorkerSpec`` of a slot index and its pipe's write end.
        on_ready: called with a slot and the config version it reported ready with.
        on_reload: called with the version a worker applied through the admin API.
    """

    def __init__(
        self,
        count: int,
        config_path: str,
        spec_for: Callable[[int, int], WorkerSpec],
        on_ready: Callable[[WorkerSlot, str], None],
        on_reload: Callable[[str], None],
    ) -> None:
        self.slots = [WorkerSlot(index) for index in range(count)]
        self._config_path = config_path
        self._spec_for = spec_for
        self._on_ready = on_ready
        self._on_reload = on_reload

    def start_all(self) -> bool:
        """Start every worker; False when the system refused to start one."""
        return all(self._spawn(slot) for slot in self.slots)

    async def wait_until_ready(self, stop: asyncio.Event) -> bool:
        """Wait until every worker reports ready; False when one exits first or on ``stop``."""
        while not all(slot.ready for slot in self.slots):
            for slot in self.slots:
                code = slot.process.poll() if slot.process is not None else None
                if code is not None:
                    log.error("worker_failed_to_start", index=slot.index, pid=slot.pid,
                              exit_code=code)
                    self._reap(slot)
                    return False
            if stop.is_set():
                return False
            await asyncio.sleep(TICK_S)
        return True

    def check(self) -> None:
        """Notice workers that exited and start the replacements that are due."""
        now = time.monotonic()
        for slot in self.slots:
            if slot.process is not None and slot.process.poll() is not None:
                self._on_exit(slot, now)
            if slot.process is None and slot.restart_at is not None and now >= slot.restart_at:
                previous = slot.last_pid
                if self._spawn(slot):
                    log.info("worker_restarted", index=slot.index, previous_pid=previous,
                             pid=slot.pid, crashes=slot.crashes)

    def signal(self, signum: int) -> None:
        """Send ``signum`` to every running worker; SIGHUP only to those that reported ready.

        A starting worker reads the accepted config itself and has no SIGHUP handler yet.
        """
        for slot in self.slots:
            if slot.process is not None and slot.running and (
                    slot.ready or signum != signal.SIGHUP):
                slot.process.send_signal(signum)

    async def stop(self, wait_s: float) -> int:
        """Send SIGTERM to every worker, wait up to ``wait_s``, then kill the rest.

        Returns:
            0 when every worker exited by itself, else 1.
        """
        self.signal(signal.SIGTERM)
        deadline = time.monotonic() + wait_s
        # Child exits come as SIGCHLD, which asyncio does not expose here, so poll.
        while self._any_running() and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(TICK_S)
        code = 0
        for slot in self.slots:
            if slot.process is None:
                continue
            if slot.process.poll() is None:
                log.error("worker_killed", index=slot.index, pid=slot.pid, waited_s=wait_s)
                slot.process.kill()
                slot.process.wait()
                code = 1
            else:
                log.info("worker_exited", index=slot.index, pid=slot.pid,
                         exit_code=slot.process.returncode)
            self._reap(slot)
        return code

    def _any_running(self) -> bool:
        return any(slot.running for slot in self.slots)

    def _spawn(self, slot: WorkerSlot) -> bool:
        """Start a worker process for ``slot``; False (logged) when the system refused."""
        try:
            read_fd, write_fd = os.pipe()
        except OSError as error:
            return self._spawn_failed(slot, error)
        os.set_blocking(read_fd, False)
        spec = self._spec_for(slot.index, write_fd)
        try:
            slot.process = subprocess.Popen(
                [sys.executable, "-m", "gatekeeper", "serve", "--config", self._config_path,
                 "--worker"],
                pass_fds=(spec.proxy_fd, spec.admin_fd, write_fd),
                env={**os.environ, WORKER_ENV: spec.to_env()},
                stdin=subprocess.DEVNULL,
            )
        except OSError as error:
            os.close(read_fd)
            return self._spawn_failed(slot, error)
        finally:
            os.close(write_fd)
        slot.control_fd = read_fd
        slot.buffer = b""
        slot.ready = False
        slot.started_at = time.monotonic()
        slot.restart_at = None
        slot.last_pid = slot.process.pid
        asyncio.get_running_loop().add_reader(read_fd, self._on_control, slot)
        log.info("worker_spawned", index=slot.index, pid=slot.process.pid)
        return True

    def _spawn_failed(self, slot: WorkerSlot, error: OSError) -> bool:
        slot.process = None
        slot.crashes += 1
        slot.restart_at = time.monotonic() + self._restart_delay_s(slot)
        log.error("worker_spawn_failed", index=slot.index, error=str(error),
                  retry_in_s=self._restart_delay_s(slot))
        return False

    @staticmethod
    def _restart_delay_s(slot: WorkerSlot) -> float:
        doublings = min(max(slot.crashes - 1, 0), 10)
        return min(RESTART_FIRST_S * (1 << doublings), RESTART_MAX_S)

    def _on_control(self, slot: WorkerSlot) -> None:
        fd = slot.control_fd
        if fd is None:
            return
        try:
            data = os.read(fd, 4096)
        except BlockingIOError:
            return
        if not data:
            self._close_control(slot)
            return
        slot.buffer += data
        *lines, slot.buffer = slot.buffer.split(b"\n")
        for line in lines:
            self._on_message(slot, line.decode(errors="replace").strip())

    def _on_message(self, slot: WorkerSlot, message: str) -> None:
        if message.startswith("ready "):
            slot.ready = True
            self._on_ready(slot, message.removeprefix("ready "))
        elif message.startswith("reload "):
            self._on_reload(message.removeprefix("reload "))
        else:
            log.warning("worker_message_unknown", index=slot.index, pid=slot.pid,
                        message=message[:80])

    def _close_control(self, slot: WorkerSlot) -> None:
        if slot.control_fd is not None:
            asyncio.get_running_loop().remove_reader(slot.control_fd)
            os.close(slot.control_fd)
            slot.control_fd = None

    def _on_exit(self, slot: WorkerSlot, now: float) -> None:
        process = slot.process
        if process is None:
            return
        code = process.returncode
        ran_s = now - slot.started_at
        self._reap(slot)
        slot.crashes = 1 if ran_s >= STABLE_AFTER_S else slot.crashes + 1
        delay_s = self._restart_delay_s(slot)
        slot.restart_at = now + delay_s
        log.error("worker_exited", index=slot.index, pid=process.pid, exit_code=code,
                  signal=_signal_name(code), ran_s=round(ran_s, 3), restart_in_s=delay_s)

    def _reap(self, slot: WorkerSlot) -> None:
        """Forget an exited worker: its pipe and its live-gauge files."""
        self._close_control(slot)
        if slot.process is not None:
            directory = multiprocess_dir()
            if directory is not None:
                multiprocess.mark_process_dead(  # type: ignore[no-untyped-call]  # untyped
                    slot.process.pid, directory)
        slot.process = None
        slot.ready = False


def _signal_name(code: int | None) -> str | None:
    if code is None or code >= 0:
        return None
    try:
        return signal.Signals(-code).name
    except ValueError:
        return None

"""The supervisor of ``gatekeeper serve``: sockets, embedded Redis, workers, reloads and stop.

The supervisor binds the proxy and admin sockets, starts the embedded Redis when the config
names one, and starts N worker processes (``gatekeeper.server``) that inherit both
sockets. Inherited sockets rather than ``SO_REUSEPORT``: every worker accepts from the one
kernel queue, so connections waiting in the queue of a worker that dies are served by the
others instead of being reset, port 0 works (tests), and the supervisor can keep the sockets
to hand to a replacement worker. Workers are new interpreters (``subprocess``), not forks, so
``PROMETHEUS_MULTIPROC_DIR`` is in their environment before anything imports
prometheus-client, and no event loop or thread state is copied.

It then:

- restarts a worker that exits, after 0.5 s, doubling up to 30 s while it keeps crashing
  within 30 s of its start;
- reloads on SIGHUP, on a change of the config file, and when a worker reports a reload made
  through the admin API. It validates the file itself, stores the accepted text in its
  private directory and sends SIGHUP to every worker, which then load that text;
- restarts the embedded Redis if it exits;
- on SIGTERM or SIGINT closes its copies of the sockets, sends SIGTERM to every worker,
  waits ``server.shutdown_grace_s`` plus ``STOP_MARGIN_S`` for them, then stops Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import structlog
from prometheus_client import multiprocess

from gatekeeper.config.model import Config, split_host_port
from gatekeeper.config.reload import ReloadRejected, ReloadResult, build_candidate, record_result
from gatekeeper.config.reload import watch_file as watch_config_file
from gatekeeper.embedded import EmbeddedRedis, EmbeddedServerError
from gatekeeper.errors import ConfigError
from gatekeeper.ledger import mask_url
from gatekeeper.metrics import multiprocess_dir
from gatekeeper.runtime import Source, build_snapshot, read_source
from gatekeeper.server import WORKER_ENV, WorkerSpec

log = structlog.get_logger("gatekeeper.supervisor")

TICK_S = 0.1
RESTART_FIRST_S = 0.5
RESTART_MAX_S = 30.0
# A worker that ran this long before exiting restarts after RESTART_FIRST_S again.
STABLE_AFTER_S = 30.0
STOP_MARGIN_S = 10.0
REDIS_CHECK_S = 1.0


def default_workers() -> int:
    """Return the number of CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def bind_socket(address: str) -> socket.socket:
    """Open a listening TCP socket for ``host:port``; IPv6 hosts are accepted."""
    host, port = split_host_port(address)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.create_server((host, port), family=family, backlog=1024)


def address_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


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


class Supervisor:
    """Runs the workers of one ``gatekeeper serve``.

    Args:
        source: the config file as read at start.
        config: the validated config.
        workers: how many worker processes to run.
        state_dir: a private directory for the accepted config and the metrics files.
    """

    def __init__(self, source: Source, config: Config, workers: int, state_dir: Path) -> None:
        self.source = source
        self.config = config
        self.workers = workers
        self.state_dir = state_dir
        self.accepted_path = state_dir / "accepted.yaml"
        self.slots = [WorkerSlot(index) for index in range(workers)]
        self.proxy_socket = bind_socket(config.listen.proxy)
        self.admin_socket = bind_socket(config.listen.admin)
        self.redis_url = config.redis.url
        self.embedded: EmbeddedRedis | None = None
        self._stop = asyncio.Event()
        self._reload_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        self._redis_checked = 0.0

    async def run(self) -> int:
        """Start everything, supervise until SIGTERM or SIGINT, then stop; return the exit code."""
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, self._stop.set)
        loop.add_signal_handler(signal.SIGHUP, self._reload_soon, "sighup", None)
        try:
            await self._start_redis()
        except EmbeddedServerError as error:
            print(f"gatekeeper: cannot start the embedded Redis: {error}", file=sys.stderr)
            return 1
        self._write_accepted(self.source)
        for slot in self.slots:
            self._spawn(slot)
        if not await self._wait_until_ready():
            code = await self._shutdown()
            return code if self._stop.is_set() else 1
        log.info("gatekeeper_started", proxy=address_of(self.proxy_socket),
                 admin=address_of(self.admin_socket), redis=mask_url(self.redis_url),
                 config=self.source.path, version=self.source.version, workers=self.workers,
                 routes=len(self.config.routes), pid=os.getpid())
        watcher = loop.create_task(watch_config_file(self.source.path, self._on_file_change))
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), TICK_S)
            self._check_workers()
            await self._check_redis()
        watcher.cancel()
        return await self._shutdown()

    # Workers.

    def _spawn(self, slot: WorkerSlot) -> None:
        read_fd, write_fd = os.pipe()
        os.set_blocking(read_fd, False)
        spec = WorkerSpec(config_path=self.source.path, accepted_path=str(self.accepted_path),
                          proxy_fd=self.proxy_socket.fileno(), admin_fd=self.admin_socket.fileno(),
                          control_fd=write_fd, redis_url=self.redis_url,
                          supervisor_pid=os.getpid(), index=slot.index)
        try:
            slot.process = subprocess.Popen(
                [sys.executable, "-m", "gatekeeper", "serve", "--config", self.source.path,
                 "--worker"],
                pass_fds=(spec.proxy_fd, spec.admin_fd, write_fd),
                env={**os.environ, WORKER_ENV: spec.to_env()},
                stdin=subprocess.DEVNULL,
            )
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
            if message.removeprefix("ready ") != self.source.version and slot.process:
                # The config was accepted while this worker was starting.
                slot.process.send_signal(signal.SIGHUP)
        elif message.startswith("reload "):
            self._reload_soon("admin", message.removeprefix("reload "))
        else:
            log.warning("worker_message_unknown", index=slot.index, pid=slot.pid,
                        message=message[:80])

    def _close_control(self, slot: WorkerSlot) -> None:
        if slot.control_fd is not None:
            asyncio.get_running_loop().remove_reader(slot.control_fd)
            os.close(slot.control_fd)
            slot.control_fd = None

    async def _wait_until_ready(self) -> bool:
        """Wait until every worker reports ready; False when one exits first or on stop."""
        while not all(slot.ready for slot in self.slots):
            for slot in self.slots:
                code = slot.process.poll() if slot.process is not None else None
                if code is not None:
                    log.error("worker_failed_to_start", index=slot.index, pid=slot.pid,
                              exit_code=code)
                    self._reap(slot)
                    return False
            if self._stop.is_set():
                return False
            await asyncio.sleep(TICK_S)
        return True

    def _check_workers(self) -> None:
        now = time.monotonic()
        for slot in self.slots:
            if slot.process is not None and slot.process.poll() is not None:
                self._on_exit(slot, now)
            if slot.process is None and slot.restart_at is not None and now >= slot.restart_at:
                previous = slot.last_pid
                self._spawn(slot)
                log.info("worker_restarted", index=slot.index, previous_pid=previous,
                         pid=slot.pid, crashes=slot.crashes)

    def _on_exit(self, slot: WorkerSlot, now: float) -> None:
        process = slot.process
        if process is None:
            return
        code = process.returncode
        ran_s = now - slot.started_at
        self._reap(slot)
        slot.crashes = 1 if ran_s >= STABLE_AFTER_S else slot.crashes + 1
        delay_s = min(RESTART_FIRST_S * 2 ** (slot.crashes - 1), RESTART_MAX_S)
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

    def _any_running(self) -> bool:
        return any(slot.process is not None and slot.process.poll() is None
                   for slot in self.slots)

    def _signal_workers(self, signum: int) -> None:
        """Send ``signum`` to every running worker that has reported ready.

        A starting worker reads the accepted config itself and has no SIGHUP handler yet.
        """
        for slot in self.slots:
            running = slot.process is not None and slot.process.poll() is None
            if slot.process is not None and running and (slot.ready or signum != signal.SIGHUP):
                slot.process.send_signal(signum)

    # Reload.

    def _reload_soon(self, trigger: str, version: str | None) -> None:
        task = asyncio.get_running_loop().create_task(self._reload(trigger, version))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _on_file_change(self) -> None:
        self._reload_soon("file_change", None)

    async def _reload(self, trigger: str, reported: str | None) -> None:
        """Validate the config file and, if accepted, bring every worker to it.

        Args:
            trigger: ``sighup``, ``file_change`` or ``admin``.
            reported: for ``admin``, the version a worker already applied and counted.
        """
        async with self._reload_lock:
            previous = self.source.version
            result = await self._validate()
            if result.result == "applied" and self.source.version == reported:
                log.info("config_accepted", trigger=trigger, version=reported)
            elif result.result != "unchanged" or trigger != "admin":
                record_result(result, trigger, previous)
            if result.accepted:
                self._signal_workers(signal.SIGHUP)

    async def _validate(self) -> ReloadResult:
        try:
            source = read_source(self.source.path)
        except ConfigError as error:
            return ReloadResult("invalid", error.file, self.source.version, tuple(error.problems))
        if source.version == self.source.version:
            return ReloadResult("unchanged", source.path, source.version)
        try:
            candidate = build_candidate(self.config, source)
        except ReloadRejected as error:
            return ReloadResult(error.result, source.path, self.source.version,
                                tuple(error.problems))
        await candidate.close()
        self._write_accepted(source)
        self.source = source
        self.config = candidate.config
        return ReloadResult("applied", source.path, source.version)

    def _write_accepted(self, source: Source) -> None:
        """Store the accepted config text; replaced in one rename, so workers never read half."""
        partial = self.accepted_path.with_suffix(".partial")
        partial.write_text(source.text, encoding="utf-8")
        partial.chmod(0o600)
        partial.replace(self.accepted_path)

    # Embedded Redis.

    async def _start_redis(self) -> None:
        if self.config.redis.url != "embedded":
            return
        self.embedded = EmbeddedRedis(Path(self.config.redis.data_dir))
        await asyncio.to_thread(self.embedded.start)
        self.redis_url = self.embedded.url

    async def _check_redis(self) -> None:
        server = self.embedded
        now = time.monotonic()
        if server is None or now - self._redis_checked < REDIS_CHECK_S:
            return
        self._redis_checked = now
        if server.process is not None and server.process.poll() is None:
            return
        code = server.process.returncode if server.process is not None else None
        log.error("embedded_redis_exited", exit_code=code, address=f"{server.host}:{server.port}")
        server.process = None
        try:
            await asyncio.to_thread(server.start)
        except EmbeddedServerError as error:
            log.error("embedded_redis_restart_failed", error=str(error),
                      retry_in_s=REDIS_CHECK_S)

    # Stop.

    async def _shutdown(self) -> int:
        grace_s = self.config.server.shutdown_grace_s
        log.info("gatekeeper_stopping", grace_s=grace_s, pid=os.getpid())
        # Close the supervisor's copies first, so the sockets close as soon as the last
        # worker closes its own, and new connections are refused.
        self.proxy_socket.close()
        self.admin_socket.close()
        code = await self._stop_workers(grace_s + STOP_MARGIN_S)
        for task in list(self._tasks):
            task.cancel()
        if self.embedded is not None:
            await asyncio.to_thread(self.embedded.stop)
        log.info("gatekeeper_stopped", pid=os.getpid())
        return code

    async def _stop_workers(self, wait_s: float) -> int:
        """Send SIGTERM to every worker, wait up to ``wait_s``, then kill the rest.

        Returns:
            0 when every worker exited by itself, else 1.
        """
        self._signal_workers(signal.SIGTERM)
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


def _signal_name(code: int | None) -> str | None:
    if code is None or code >= 0:
        return None
    try:
        return signal.Signals(-code).name
    except ValueError:
        return None


def run_supervisor(config_path: str, workers: int | None, state_dir: Path) -> int:
    """Validate the config, bind the listeners and supervise workers until stopped.

    Args:
        config_path: the config file.
        workers: ``--workers``; None means ``server.workers``, then one per CPU.
        state_dir: an empty private directory; ``PROMETHEUS_MULTIPROC_DIR`` must already
            name a directory inside it.

    Returns:
        The process exit code: 0 after a clean stop, 1 when the gateway could not start or
        a worker had to be killed.
    """
    try:
        source = read_source(config_path)
        config = build_snapshot(source).config
    except ConfigError as error:
        print(error, file=sys.stderr)
        return 1
    count = workers or config.server.workers or default_workers()
    directory = multiprocess_dir()
    if directory is not None:
        # Importing gatekeeper.metrics gave this process files for every gauge, valued 0.
        # The supervisor serves no requests, so its "live" gauges must not pull the
        # workers' minimum or sum; removing them leaves only its reload counters visible.
        multiprocess.mark_process_dead(  # type: ignore[no-untyped-call]  # untyped
            os.getpid(), directory)
    try:
        supervisor = Supervisor(source, config, count, state_dir)
    except OSError as error:
        print(f"gatekeeper: cannot listen on {config.listen.proxy} and {config.listen.admin}: "
              f"{error}", file=sys.stderr)
        return 1
    return asyncio.run(supervisor.run())

"""The supervisor of ``gatekeeper serve``: sockets, embedded Redis, workers, reloads and stop.

The supervisor binds the proxy and admin sockets, starts the embedded Redis when the config
names one, and starts N worker processes (``gatekeeper.workers``) that inherit both sockets.

Why inherited sockets rather than ``SO_REUSEPORT``: every worker accepts from the one kernel
queue. So connections waiting in the queue of a worker that dies are served by the others
instead of being reset. Port 0 works too, and the supervisor keeps the sockets for a
replacement worker. Workers are new interpreters (``subprocess``), not forks, so
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
import sys
import time
from pathlib import Path

import structlog
from prometheus_client import multiprocess

from gatekeeper.config.loader import config_warnings
from gatekeeper.config.model import Config, split_host_port
from gatekeeper.config.reload import ReloadRejected, ReloadResult, build_candidate, record_result
from gatekeeper.config.reload import watch_file as watch_config_file
from gatekeeper.embedded import EmbeddedRedis, EmbeddedServerError
from gatekeeper.errors import ConfigError
from gatekeeper.ledger import mask_url
from gatekeeper.metrics import multiprocess_dir
from gatekeeper.runtime import Source, build_snapshot, read_source
from gatekeeper.server import WorkerSpec
from gatekeeper.workers import TICK_S, Workers, WorkerSlot

log = structlog.get_logger("gatekeeper.supervisor")

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
        self.proxy_socket = bind_socket(config.listen.proxy)
        self.admin_socket = bind_socket(config.listen.admin)
        self.processes = Workers(workers, source.path, self._spec_for, self._on_ready,
                                lambda version: self._reload_soon("admin", version))
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
        started = self.processes.start_all()
        if not started or not await self.processes.wait_until_ready(self._stop):
            code = await self._shutdown()
            return code if self._stop.is_set() else 1
        log.info("gatekeeper_started", proxy=address_of(self.proxy_socket),
                 admin=address_of(self.admin_socket), redis=mask_url(self.redis_url),
                 config=self.source.path, version=self.source.version, workers=self.workers,
                 routes=len(self.config.routes), pid=os.getpid())
        for warning in config_warnings(self.config):
            log.warning("config_warning", config=self.source.path, warning=warning)
        watcher = loop.create_task(watch_config_file(self.source.path, self._on_file_change))
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), TICK_S)
            self.processes.check()
            await self._check_redis()
        watcher.cancel()
        return await self._shutdown()

    # Workers.

    def _spec_for(self, index: int, control_fd: int) -> WorkerSpec:
        return WorkerSpec(config_path=self.source.path, accepted_path=str(self.accepted_path),
                          proxy_fd=self.proxy_socket.fileno(), admin_fd=self.admin_socket.fileno(),
                          control_fd=control_fd, redis_url=self.redis_url,
                          supervisor_pid=os.getpid(), index=index)

    def _on_ready(self, slot: WorkerSlot, version: str) -> None:
        if version != self.source.version and slot.process is not None:
            # The config was accepted while this worker was starting.
            slot.process.send_signal(signal.SIGHUP)

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
            if result.result == "applied":
                self.processes.signal(signal.SIGHUP)

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
        code = await self.processes.stop(grace_s + STOP_MARGIN_S)
        for task in list(self._tasks):
            task.cancel()
        if self.embedded is not None:
            await asyncio.to_thread(self.embedded.stop)
        log.info("gatekeeper_stopped", pid=os.getpid())
        return code


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

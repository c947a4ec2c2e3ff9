"""One worker process: both listeners on sockets inherited from the supervisor, until SIGTERM.

The supervisor (``gatekeeper.supervisor``) binds the sockets, starts each worker with
``gatekeeper serve --worker`` and describes the job in the ``GATEKEEPER_WORKER``
environment variable (``WorkerSpec``). A worker:

1. loads the config text the supervisor accepted, connects to Redis (retrying until it
   replies) and starts the proxy and admin apps on the inherited sockets;
2. tells the supervisor ``ready`` over its control pipe;
3. reloads on SIGHUP (the supervisor sends one to every worker after it accepted a new
   config) and asks the supervisor to spread a reload made through the admin API;
4. on SIGTERM or SIGINT: ``/readyz`` answers 503, both listeners close, requests in flight
   get up to ``server.shutdown_grace_s`` to finish and settle their refunds, the journal is
   flushed, and the process exits 0. It does the same when the supervisor disappears.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
from collections.abc import Callable, Coroutine
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import structlog
from aiohttp import web

from gatekeeper import metrics
from gatekeeper.app import build_admin_app, build_proxy_app
from gatekeeper.config.model import Config
from gatekeeper.config.reload import Reloader
from gatekeeper.errors import ConfigError, LedgerUnavailable
from gatekeeper.journal import Journal
from gatekeeper.ledger import Ledger, connect_redis, mask_url
from gatekeeper.ledger.client import RedisClient
from gatekeeper.metering import Metering
from gatekeeper.runtime import RuntimeHolder, Snapshot, Source, build_snapshot

log = structlog.get_logger("gatekeeper.server")

WORKER_ENV = "GATEKEEPER_WORKER"
CONNECT_RETRY_MAX_S = 5.0
SUPERVISOR_CHECK_S = 1.0
# The admin listener's requests are short; this caps their drain time on shutdown.
ADMIN_GRACE_S = 5.0


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    """The job the supervisor gives a worker, passed as JSON in ``GATEKEEPER_WORKER``.

    The Redis URL travels in the environment, not in argv, because argv is visible to every
    user of the machine.

    Attributes:
        config_path: the operator's config file, as named in messages.
        accepted_path: the copy of the config text the supervisor accepted last.
        proxy_fd: the inherited proxy listening socket.
        admin_fd: the inherited admin listening socket.
        control_fd: the write end of this worker's pipe to the supervisor.
        redis_url: the Redis URL (the embedded server's, when configured so).
        supervisor_pid: the supervisor's pid; the worker stops when its parent changes.
        index: the worker's slot, 0 to workers - 1.
    """

    config_path: str
    accepted_path: str
    proxy_fd: int
    admin_fd: int
    control_fd: int
    redis_url: str
    supervisor_pid: int
    index: int

    def to_env(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_env(cls) -> WorkerSpec:
        """Read the spec from ``GATEKEEPER_WORKER``.

        Raises:
            KeyError, TypeError, ValueError: when the variable is missing or malformed.
        """
        return cls(**json.loads(os.environ[WORKER_ENV]))

    def accepted_source(self) -> Source:
        """Return the accepted config text, named after the operator's file."""
        return Source(self.config_path, Path(self.accepted_path).read_text(encoding="utf-8"))


class Control:
    """The write end of the pipe to the supervisor: one short text line per message."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def send(self, message: str) -> None:
        try:
            os.write(self.fd, message.encode() + b"\n")
        except OSError as error:
            log.warning("supervisor_unreachable", message=message, error=str(error))


async def connect_with_retry(url: str, config: Config, stop: asyncio.Event) -> RedisClient | None:
    """Connect to Redis, retrying with backoff until it replies; None when stopped first."""
    delay_s = 0.1
    attempt = 1
    while not stop.is_set():
        try:
            return await connect_redis(url, timeout_ms=config.redis.timeout_ms,
                                       max_connections=config.redis.max_connections)
        except LedgerUnavailable as error:
            log.warning("ledger_connect_retry", url=mask_url(url), attempt=attempt,
                        retry_in_s=delay_s, error=str(error))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), delay_s)
        delay_s = min(delay_s * 2, CONNECT_RETRY_MAX_S)
        attempt += 1
    return None


async def run_worker(spec: WorkerSpec) -> None:
    """Serve on the inherited sockets until SIGTERM, SIGINT or the supervisor's exit."""
    structlog.contextvars.bind_contextvars(pid=os.getpid(), worker=spec.index)
    snapshot = build_snapshot(spec.accepted_source())
    stop = asyncio.Event()
    reload_tasks: set[asyncio.Task[Any]] = set()
    _install_signals(stop)
    client = await connect_with_retry(spec.redis_url, snapshot.config, stop)
    if client is None:
        log.info("worker_stopped", reason="stopped before Redis replied")
        return
    ledger = Ledger(client, key_prefix=snapshot.config.redis.key_prefix,
                    charge_ttl_s=snapshot.config.ledger.charge_ttl_s)
    try:
        await _serve(spec, snapshot, ledger, stop, reload_tasks)
    finally:
        await ledger.close()


def _install_signals(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)


async def _serve(spec: WorkerSpec, snapshot: Snapshot, ledger: Ledger, stop: asyncio.Event,
                 reload_tasks: set[asyncio.Task[Any]]) -> None:
    config = snapshot.config
    holder = RuntimeHolder(snapshot)
    await snapshot.start()
    control = Control(spec.control_fd)
    metering = Metering(ledger, Journal(config.ledger.journal_path),
                        timeout_s=config.redis.timeout_ms / 1000)
    reloader = Reloader(holder, accepted_source=spec.accepted_source, on_applied=_applied,
                        on_admin_applied=lambda version: control.send(f"reload {version}"))
    draining = False

    async def ready() -> bool:
        return not draining and await ledger.ping()

    grace_s = config.server.shutdown_grace_s
    proxy_runner = web.AppRunner(build_proxy_app(holder, ledger, metering), access_log=None,
                                 shutdown_timeout=grace_s, handler_cancellation=True)
    admin_runner = web.AppRunner(build_admin_app(holder, ledger, ready=ready, reloader=reloader),
                                 access_log=None, shutdown_timeout=min(grace_s, ADMIN_GRACE_S))
    await proxy_runner.setup()
    await admin_runner.setup()
    await web.SockSite(proxy_runner, _inherited(spec.proxy_fd)).start()
    await web.SockSite(admin_runner, _inherited(spec.admin_fd)).start()

    loop = asyncio.get_running_loop()

    def on_sighup() -> None:
        task = loop.create_task(reloader.reload("sighup"))
        reload_tasks.add(task)
        task.add_done_callback(reload_tasks.discard)

    loop.add_signal_handler(signal.SIGHUP, on_sighup)
    watchdog = loop.create_task(_watch_supervisor(spec.supervisor_pid, stop))
    control.send(f"ready {snapshot.version}")
    log.info("worker_started", version=snapshot.version, routes=len(config.routes))
    await stop.wait()

    draining = True
    log.info("worker_stopping", grace_s=grace_s, in_flight=holder.current.in_flight)
    watchdog.cancel()
    loop.remove_signal_handler(signal.SIGHUP)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    for site in (*proxy_runner.sites, *admin_runner.sites):
        await site.stop()
    await proxy_runner.cleanup()
    await admin_runner.cleanup()
    if reload_tasks:
        await asyncio.gather(*reload_tasks, return_exceptions=True)
    await reloader.close()
    await holder.current.close()
    log.info("worker_stopped")


def _applied(snapshot: Snapshot) -> None:
    metrics.DEFERRED_LIMIT.set(snapshot.config.ledger.max_deferred_tickets)


def _inherited(fd: int) -> socket.socket:
    sock = socket.socket(fileno=fd)
    sock.setblocking(False)
    return sock


async def _watch_supervisor(supervisor_pid: int, stop: asyncio.Event) -> None:
    # NOTE: polled because the kernel sends no event when the parent exits (short of the
    # Linux-only PR_SET_PDEATHSIG).
    while os.getppid() == supervisor_pid:  # noqa: ASYNC110 - nothing to wait on
        await asyncio.sleep(SUPERVISOR_CHECK_S)
    log.error("supervisor_gone", supervisor_pid=supervisor_pid)
    stop.set()


def worker_main() -> int:
    """Run a worker process from ``GATEKEEPER_WORKER``; return its exit code."""
    # Until the event loop handles SIGHUP, its default action would end the process.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        spec = WorkerSpec.from_env()
    except (KeyError, TypeError, ValueError) as error:
        log.error("worker_spec_invalid", variable=WORKER_ENV, error=str(error))
        return 2
    runner: Callable[[Coroutine[Any, Any, None]], None]
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:
        runner = asyncio.run
    try:
        runner(run_worker(spec))
    except ConfigError as error:
        log.error("worker_failed", file=error.file, problems=error.problems)
        return 1
    except OSError as error:
        log.error("worker_failed", error=str(error))
        return 1
    return 0

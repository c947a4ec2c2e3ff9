"""Run the gateway: embedded Redis if configured, the ledger, both listeners, clean shutdown.

``serve`` blocks until SIGINT or SIGTERM; it then stops accepting connections, lets requests
in flight finish for up to ``server.shutdown_grace_s`` seconds, closes Redis connections and
stops the embedded server it started.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import structlog
from aiohttp import web

from gatekeeper.app import build_admin_app, build_proxy_app
from gatekeeper.config.model import Config, split_host_port
from gatekeeper.embedded import EmbeddedRedis
from gatekeeper.ledger import Ledger, connect_redis
from gatekeeper.runtime import RuntimeHolder, Snapshot, build_snapshot, read_source

log = structlog.get_logger("gatekeeper.server")


def mask_url(url: str) -> str:
    """Hide the password of a Redis URL before it is logged."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    credentials, _, host = rest.rpartition("@")
    user = credentials.partition(":")[0]
    return f"{scheme}://{user}:***@{host}"


def bind_socket(address: str) -> socket.socket:
    """Open a listening TCP socket for ``host:port``; IPv6 hosts are accepted."""
    host, port = split_host_port(address)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.create_server((host, port), family=family, backlog=1024)
    sock.setblocking(False)
    return sock


def address_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@contextlib.asynccontextmanager
async def redis_url_for(config: Config) -> AsyncIterator[str]:
    """Yield the Redis URL to use, starting and later stopping the embedded server if asked."""
    if config.redis.url != "embedded":
        yield config.redis.url
        return
    server = EmbeddedRedis(Path(config.redis.data_dir))
    await asyncio.to_thread(server.start)
    try:
        yield server.url
    finally:
        await asyncio.to_thread(server.stop)


async def run(config_path: str, *, ready: asyncio.Event | None = None) -> None:
    """Serve until SIGINT or SIGTERM.

    Args:
        config_path: the YAML file to load.
        ready: set once both listeners accept connections (used by tests and the demo).
    """
    snapshot = build_snapshot(read_source(config_path))
    config = snapshot.config
    proxy_socket = bind_socket(config.listen.proxy)
    admin_socket = bind_socket(config.listen.admin)

    async with redis_url_for(config) as url:
        client = await connect_redis(
            url, timeout_ms=config.redis.timeout_ms, max_connections=config.redis.max_connections
        )
        ledger = Ledger(client, key_prefix=config.redis.key_prefix)
        try:
            await _serve(snapshot, ledger, proxy_socket, admin_socket, url, ready)
        finally:
            await ledger.close()


async def _serve(
    snapshot: Snapshot,
    ledger: Ledger,
    proxy_socket: socket.socket,
    admin_socket: socket.socket,
    redis_url: str,
    ready: asyncio.Event | None,
) -> None:
    holder = RuntimeHolder(snapshot)
    await snapshot.start()
    grace_s = snapshot.config.server.shutdown_grace_s
    proxy_runner = web.AppRunner(build_proxy_app(holder, ledger), access_log=None,
                                 shutdown_timeout=grace_s)
    admin_runner = web.AppRunner(build_admin_app(holder, ledger, ready=ledger.ping),
                                 access_log=None, shutdown_timeout=min(grace_s, 5.0))
    await proxy_runner.setup()
    await admin_runner.setup()
    await web.SockSite(proxy_runner, proxy_socket).start()
    await web.SockSite(admin_runner, admin_socket).start()

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)

    log.info("gatekeeper_started", proxy=address_of(proxy_socket), admin=address_of(admin_socket),
             redis=mask_url(redis_url), config=snapshot.source.path, version=snapshot.version,
             routes=len(snapshot.config.routes))
    if ready is not None:
        ready.set()
    await stop.wait()

    log.info("gatekeeper_stopping", grace_s=grace_s)
    await proxy_runner.cleanup()
    await admin_runner.cleanup()
    await holder.current.close()
    log.info("gatekeeper_stopped")

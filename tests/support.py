"""Helpers shared by integration tests: config text, an in-process gateway, a gateway process.

Both kinds of gateway run the real code against the test session's Redis. The process kind
runs ``python -m gatekeeper serve`` and reads the listen addresses from its start log line.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestServer

from gatekeeper.app import build_admin_app, build_proxy_app
from gatekeeper.auth.mint import mint_token
from gatekeeper.ledger import Ledger, connect_redis
from gatekeeper.runtime import RuntimeHolder, Source, build_snapshot

JWT_SECRET = "integration-test-secret-0123456789abcdef"
ADMIN_TOKEN = "integration-admin-token"
ENV = {"GK_TEST_JWT_SECRET": JWT_SECRET, "GK_TEST_ADMIN_TOKEN": ADMIN_TOKEN}


def config_text(
    *,
    redis_url: str,
    upstream_url: str,
    routes: str,
    upstream_extra: str = "",
    extra: str = "",
    listen: str = "listen: {proxy: '127.0.0.1:0', admin: '127.0.0.1:0'}",
) -> str:
    """Return a config with HS256 tokens, an admin token, one upstream and the given routes."""
    return "\n".join([
        listen,
        f"redis: {{url: '{redis_url}'}}",
        "auth:",
        "  jwt: {algorithms: [HS256], secret_env: GK_TEST_JWT_SECRET, team_claim: team}",
        "admin: {token_env: GK_TEST_ADMIN_TOKEN}",
        "upstreams:",
        "  api:",
        f"    url: {upstream_url}",
        textwrap.indent(textwrap.dedent(upstream_extra).strip(), "    "),
        "routes:",
        textwrap.indent(textwrap.dedent(routes).strip(), "  "),
        textwrap.dedent(extra).strip(),
        "",
    ])


def token(tenant: str, **claims: Any) -> str:
    return mint_token(JWT_SECRET, tenant=tenant, **claims)


def bearer(tenant: str, **claims: Any) -> dict[str, str]:
    return {"Authorization": f"Bearer {token(tenant, **claims)}"}


ADMIN_HEADERS = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@dataclass
class Gateway:
    """An in-process gateway: proxy and admin test servers sharing one ledger."""

    proxy_url: str
    admin_url: str
    ledger: Ledger
    holder: RuntimeHolder

    async def grant(self, session: aiohttp.ClientSession, pool: str, tickets: int) -> None:
        """Grant tickets through the admin API, as an operator would."""
        headers = {**ADMIN_HEADERS, "Idempotency-Key": f"grant-{pool}-{time.monotonic_ns()}"}
        url = f"{self.admin_url}/admin/v1/pools/{pool.replace('/', '%2F')}/grants"
        async with session.post(url, json={"tickets": tickets}, headers=headers) as response:
            if response.status != 201:
                raise AssertionError(f"grant failed: {response.status} {await response.text()}")


@asynccontextmanager
async def running_gateway(text: str) -> AsyncIterator[Gateway]:
    """Run a gateway for ``text`` in this event loop until the block ends."""
    snapshot = build_snapshot(Source("test.yaml", text), env={**os.environ, **ENV})
    config = snapshot.config
    client = await connect_redis(config.redis.url, timeout_ms=config.redis.timeout_ms,
                                 max_connections=config.redis.max_connections)
    ledger = Ledger(client, key_prefix=config.redis.key_prefix,
                    charge_ttl_s=config.ledger.charge_ttl_s)
    holder = RuntimeHolder(snapshot)
    await snapshot.start()
    proxy = TestServer(build_proxy_app(holder, ledger), host="127.0.0.1")
    admin = TestServer(build_admin_app(holder, ledger, ready=ledger.ping), host="127.0.0.1")
    await proxy.start_server()
    await admin.start_server()
    try:
        yield Gateway(str(proxy.make_url("")).rstrip("/"), str(admin.make_url("")).rstrip("/"),
                      ledger, holder)
    finally:
        await proxy.close()
        await admin.close()
        await holder.current.close()
        await ledger.close()


class GatewayProcess:
    """``python -m gatekeeper serve`` in a subprocess, with its JSON log kept in a file."""

    def __init__(self, config_path: Path, log_path: Path, env: Mapping[str, str] | None = None,
                 args: tuple[str, ...] = ()) -> None:
        self.config_path = config_path
        self.log_path = log_path
        self.env = {**os.environ, **ENV, "GATEKEEPER_LOG_FORMAT": "json", **(env or {})}
        self.args = args
        self.process: subprocess.Popen[bytes] | None = None
        self.proxy_url = ""
        self.admin_url = ""
        self._log: IO[bytes] | None = None

    def start(self, timeout_s: float = 30.0) -> GatewayProcess:
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gatekeeper", "serve", "--config", str(self.config_path),
             *self.args],
            stdout=self._log, stderr=subprocess.STDOUT, env=self.env,
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            started = self.find_log("gatekeeper_started")
            if started:
                self.proxy_url = f"http://{started[0]['proxy']}"
                self.admin_url = f"http://{started[0]['admin']}"
                return self
            if self.process.poll() is not None:
                raise AssertionError(f"gateway exited early:\n{self.log_path.read_text()}")
            time.sleep(0.05)
        raise AssertionError(f"gateway did not start:\n{self.log_path.read_text()}")

    def log_lines(self) -> list[dict[str, Any]]:
        lines = []
        for raw in self.log_path.read_text(errors="replace").splitlines():
            try:
                lines.append(json.loads(raw))
            except json.JSONDecodeError:
                continue
        return lines

    def find_log(self, event: str) -> list[dict[str, Any]]:
        return [line for line in self.log_lines() if line.get("event") == event]

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 30.0) -> int:
        if self.process is None:
            return 0
        if self.process.poll() is None:
            self.process.send_signal(sig)
        code = self.process.wait(timeout=timeout_s)
        if self._log is not None:
            self._log.close()
        return code


# Helpers for the operations tests: waiting for events, load, metrics and a TCP proxy that
# can go silent.

WAIT_CAP_S = 30.0


def wait_until(condition: Callable[[], Any], *, what: str, timeout_s: float = WAIT_CAP_S,
               interval_s: float = 0.05) -> Any:
    """Poll ``condition`` until it returns a true value, and return that value.

    Raises:
        AssertionError: naming ``what`` when the condition stays false for ``timeout_s``.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(interval_s)


async def wait_until_async(condition: Callable[[], Awaitable[Any]], *, what: str,
                           timeout_s: float = WAIT_CAP_S, interval_s: float = 0.05) -> Any:
    """Await ``condition`` until it returns a true value, and return that value.

    Raises:
        AssertionError: naming ``what`` when the condition stays false for ``timeout_s``.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        value = await condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(interval_s)


def write_config(path: Path, text: str, *, keep_mtime: bool = False) -> None:
    """Write a config file in one rename.

    ``keep_mtime`` restores the old mtime. The file watcher then misses a change of the same
    size, so only an explicit SIGHUP or admin call reloads it.
    """
    before = path.stat().st_mtime_ns if keep_mtime and path.exists() else None
    partial = path.with_suffix(".partial")
    partial.write_text(text)
    partial.replace(path)
    if before is not None:
        os.utime(path, ns=(before, before))


def start_gateway(tmp_path: Path, text: str, *, workers: int = 1, name: str = "gateway",
                  env: Mapping[str, str] | None = None) -> GatewayProcess:
    """Write ``text`` to ``tmp_path/<name>.yaml`` and start ``gatekeeper serve`` on it."""
    config = tmp_path / f"{name}.yaml"
    config.write_text(text)
    return GatewayProcess(config, tmp_path / f"{name}.log", env=env,
                          args=("--workers", str(workers))).start()


def worker_pids(gateway: GatewayProcess) -> set[int]:
    """Return the pids of every worker that logged ``worker_started`` so far."""
    return {int(line["pid"]) for line in gateway.find_log("worker_started")}


def parse_metrics(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Parse the Prometheus text format into ``{(sample name, sorted labels): value}``."""
    from prometheus_client.parser import text_string_to_metric_families

    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


async def read_metrics(session: aiohttp.ClientSession, admin_url: str
                       ) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    async with session.get(f"{admin_url}/metrics") as response:
        if response.status != 200:
            raise AssertionError(f"/metrics returned {response.status}")
        return parse_metrics(await response.text())


def metric(samples: Mapping[tuple[str, tuple[tuple[str, str], ...]], float], name: str,
           **labels: str) -> float:
    """Return one sample's value, 0 when the series does not exist yet."""
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def admin_json(session: aiohttp.ClientSession, method: str, url: str,
                     **kwargs: Any) -> tuple[int, Any]:
    """Send an admin request with the admin token; return the status and JSON body."""
    headers = {**ADMIN_HEADERS, **kwargs.pop("headers", {})}
    async with session.request(method, url, headers=headers, **kwargs) as response:
        return response.status, await response.json(content_type=None)


async def grant(session: aiohttp.ClientSession, admin_url: str, pool: str, tickets: int) -> None:
    """Grant ``tickets`` to ``pool`` through a gateway's admin API."""
    key = f"grant-{pool}-{time.monotonic_ns()}"
    status, body = await admin_json(
        session, "POST", f"{admin_url}/admin/v1/pools/{pool.replace('/', '%2F')}/grants",
        json={"tickets": tickets}, headers={"Idempotency-Key": key})
    if status != 201:
        raise AssertionError(f"grant failed: {status} {body}")


async def balance_of(session: aiohttp.ClientSession, admin_url: str, pool: str) -> int:
    status, body = await admin_json(session, "GET",
                                    f"{admin_url}/admin/v1/pools/{pool.replace('/', '%2F')}")
    if status != 200:
        raise AssertionError(f"reading pool {pool} failed: {status} {body}")
    return int(body["balance"])


@dataclass
class Outcome:
    """One response of a load run."""

    status: int
    headers: dict[str, str]


class Load:
    """Concurrent clients sending one request each in a loop until stopped.

    Each request uses a new connection, so every one of them is accepted afresh and may land
    on any worker. Client errors (a worker killed mid-request) are recorded as status 0.

    Args:
        url: the request URL.
        headers: request headers.
        clients: how many requests are in flight at once.
        max_requests: the loop ends by itself after this many requests.
    """

    def __init__(self, url: str, headers: Mapping[str, str], *, clients: int = 4,
                 max_requests: int = 20_000, timeout_s: float = 20.0) -> None:
        self.url = url
        self.headers = dict(headers)
        self.clients = clients
        self.max_requests = max_requests
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self.outcomes: list[Outcome] = []
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> Load:
        self._tasks = [asyncio.create_task(self._client()) for _ in range(self.clients)]
        return self

    async def _client(self) -> None:
        connector = aiohttp.TCPConnector(force_close=True)
        async with aiohttp.ClientSession(connector=connector, timeout=self.timeout) as session:
            while not self._stop.is_set() and len(self.outcomes) < self.max_requests:
                try:
                    async with session.get(self.url, headers=self.headers) as response:
                        await response.read()
                        self.outcomes.append(Outcome(response.status, dict(response.headers)))
                except (TimeoutError, aiohttp.ClientError):
                    self.outcomes.append(Outcome(0, {}))

    async def wait_for(self, condition: Callable[[list[Outcome]], bool], what: str) -> None:
        """Wait until ``condition(outcomes)`` is true while the load runs."""

        async def check() -> bool:
            return condition(self.outcomes)

        await wait_until_async(check, what=what)

    async def stop(self) -> list[Outcome]:
        self._stop.set()
        await asyncio.gather(*self._tasks)
        return self.outcomes


class TcpProxy:
    """A loopback TCP proxy, on its own thread, that can go silent (a black hole).

    In black-hole mode it keeps accepting and keeps connections open but drops every byte
    in both directions, as a network partition does. ``restore`` closes the connections of
    that time, because the bytes they lost would desynchronise the Redis protocol, and
    forwards again. ``delay_s`` holds every chunk back that long, for a slow network.
    """

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self.blackholed = False
        self.delay_s = 0.0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> TcpProxy:
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._accept, "127.0.0.1", 0), self._loop).result(10)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        if self.blackholed:
            await self._drain_forever(reader)
            writer.close()
            return
        try:
            target_reader, target_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self._writers.add(target_writer)
        await asyncio.gather(self._pipe(reader, target_writer), self._pipe(target_reader, writer))
        for end in (writer, target_writer):
            end.close()
            self._writers.discard(end)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                if self.delay_s:
                    await asyncio.sleep(self.delay_s)
                if self.blackholed:
                    continue
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    @staticmethod
    async def _drain_forever(reader: asyncio.StreamReader) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while await reader.read(65536):
                pass

    def slow_down(self, delay_s: float) -> None:
        self._loop.call_soon_threadsafe(setattr, self, "delay_s", delay_s)

    def blackhole(self) -> None:
        self._loop.call_soon_threadsafe(setattr, self, "blackholed", True)

    def restore(self) -> None:
        def reopen() -> None:
            for writer in list(self._writers):
                writer.close()
            self._writers.clear()
            self.blackholed = False

        self._loop.call_soon_threadsafe(reopen)

    def stop(self) -> None:
        def close() -> None:
            if self._server is not None:
                self._server.close()
            for writer in list(self._writers):
                writer.close()
            self._loop.stop()

        self._loop.call_soon_threadsafe(close)
        self._thread.join(timeout=10)


@asynccontextmanager
async def upstream_server(
    handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
) -> AsyncIterator[str]:
    """Serve every method and path with ``handler`` on 127.0.0.1 and yield the base URL."""
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield str(server.make_url("")).rstrip("/")
    finally:
        await server.close()

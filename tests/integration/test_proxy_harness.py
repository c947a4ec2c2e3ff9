"""Shared pieces for the forwarder tests: a small gateway app, recording upstreams, raw sockets.

The gateway app does what the real one does around ``Forwarder.forward``: framing check,
path normalisation, route match, body pre-check, and one problem status per failure. It
records every ``on_headers`` call and every exception ``forward`` raised, so tests can
assert on both. Everything listens on 127.0.0.1 only. This module contains no tests.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer
from multidict import CIMultiDict, CIMultiDictProxy

from gatekeeper import errors
from gatekeeper.config.model import Proxy, Route, Upstream
from gatekeeper.proxy import (
    BodyTooLarge,
    Forwarder,
    UpstreamFailure,
    check_request_framing,
    declared_too_large,
)
from gatekeeper.routing import Router, normalize_path

ServerFactory = Callable[..., Awaitable[TestServer]]
EXTRA_HEADERS = {"Ticket-Cost": "1", "Ticket-Balance": "99"}
FAILURE_STATUS = {"connect_error": 502, "timeout": 504}
GET = b"GET / HTTP/1.1\r\nHost: c\r\nConnection: close\r\n\r\n"


@dataclass
class Gateway:
    server: TestServer
    forwarder: Forwarder
    headers_calls: list[tuple[int, CIMultiDictProxy[str]]] = field(default_factory=list)
    failures: list[BaseException] = field(default_factory=list)

    @property
    def port(self) -> int:
        port = self.server.port
        if port is None:
            raise RuntimeError("gateway server is not started")
        return port

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"


@dataclass
class Seen:
    """One request as an upstream received it."""

    method: str
    raw_path: str
    headers: CIMultiDictProxy[str]
    body: bytes


async def start_gateway(
    aiohttp_server: ServerFactory,
    *,
    upstreams: dict[str, Any],
    routes: list[dict[str, Any]] | None = None,
    proxy: dict[str, Any] | None = None,
    identity: tuple[str | None, str | None, str | None] = ("acme", None, "acme"),
    clock: Callable[[], float] | None = None,
) -> Gateway:
    """Start the test gateway; ``upstreams`` maps a name to a URL or an upstream dict."""
    upstream_models = {
        name: Upstream.model_validate(spec if isinstance(spec, dict) else {"url": spec})
        for name, spec in upstreams.items()
    }
    route_specs = routes or [{"name": "all", "match": {"path_prefix": "/"}, "upstream": "up"}]
    route_models = [
        Route.model_validate({"auth": "none", "cost": 0, **spec}) for spec in route_specs
    ]
    proxy_model = Proxy.model_validate(proxy or {})
    options = {"clock": clock} if clock is not None else {}
    forwarder = Forwarder(upstream_models, proxy_model, **options)
    router = Router(route_models)
    tenant, team, pool = identity
    app = web.Application()

    async def on_headers(status: int, headers: CIMultiDictProxy[str]) -> dict[str, str]:
        gateway.headers_calls.append((status, headers))
        return EXTRA_HEADERS

    async def handle(request: web.Request) -> web.StreamResponse:
        try:
            check_request_framing(request)
            path = normalize_path(request.raw_path.partition("?")[0])
        except errors.BadRequest as exc:
            return web.Response(status=400, text=exc.detail)
        route = router.match(request.method, path, request.headers.get("Host"))
        if route is None:
            return web.Response(status=404, text="no route")
        if declared_too_large(request, route, proxy_model):
            return web.Response(status=413, text="declared too large")
        try:
            return await forwarder.forward(
                request, route=route, path=path, tenant=tenant, team=team, pool=pool,
                on_headers=on_headers,
            )
        except UpstreamFailure as exc:
            gateway.failures.append(exc)
            return web.Response(status=FAILURE_STATUS[exc.kind], text=exc.kind)
        except BodyTooLarge as exc:
            gateway.failures.append(exc)
            return web.Response(status=413, text="too large")

    async def forwarder_lifetime(app: web.Application) -> AsyncIterator[None]:
        await forwarder.start()
        yield
        await forwarder.close()

    app.cleanup_ctx.append(forwarder_lifetime)
    app.router.add_route("*", "/{tail:.*}", handle)
    server = await aiohttp_server(app)
    gateway = Gateway(server=server, forwarder=forwarder)
    return gateway


async def recording_upstream(
    aiohttp_server: ServerFactory,
    *,
    status: int = 200,
    body: bytes = b"ok",
    headers: CIMultiDict[str] | None = None,
) -> tuple[str, list[Seen]]:
    """Start an upstream that stores each request it receives and always sends the same response."""
    seen: list[Seen] = []

    async def handle(request: web.Request) -> web.Response:
        received = await request.read()
        seen.append(Seen(request.method, request.raw_path, request.headers, received))
        return web.Response(status=status, body=body, headers=headers)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    server = await aiohttp_server(app)
    return f"http://127.0.0.1:{server.port}", seen


RawHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@asynccontextmanager
async def raw_upstream(handler: RawHandler) -> AsyncIterator[str]:
    """Run ``handler`` for each connection to a plain TCP server; yield its base URL."""

    async def guarded(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await handler(reader, writer)
        finally:
            writer.close()

    server = await asyncio.start_server(guarded, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.close()
        await server.wait_closed()


@asynccontextmanager
async def refusing_target() -> AsyncIterator[str]:
    """Yield a URL whose port is bound but not listening, so connecting is refused."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        sock.close()


async def read_head(reader: asyncio.StreamReader) -> bytes:
    """Read one HTTP message head, up to and including the blank line."""
    return await reader.readuntil(b"\r\n\r\n")


async def exchange(port: int, data: bytes) -> bytes:
    """Send raw bytes to 127.0.0.1:port and return everything read until the server closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        return await reader.read()
    finally:
        writer.close()


def parse_response(data: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
    """Split a raw response into status, header lines in order, and the body bytes."""
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = []
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers.append((name.strip(), value.strip()))
    return status, headers, body


def header_values(headers: list[tuple[str, str]], name: str) -> list[str]:
    return [value for key, value in headers if key.lower() == name.lower()]

"""Upstream failures, retries, target choice and client disconnects through the forwarder."""

from __future__ import annotations

import asyncio
from collections.abc import MutableMapping
from typing import Any

import aiohttp
import pytest
import structlog
from aiohttp import web

from gatekeeper import proxy
from gatekeeper.upstreams import COOL_DOWN_S
from tests.integration.test_proxy_harness import (
    GET,
    ServerFactory,
    exchange,
    parse_response,
    raw_upstream,
    read_head,
    recording_upstream,
    refusing_target,
    start_gateway,
)

HANG_S = 30.0


@pytest.fixture
def proxy_logs(monkeypatch: pytest.MonkeyPatch) -> structlog.testing.LogCapture:
    """Capture the forwarder's log events as dicts, whatever structlog's global setup is."""
    capture = structlog.testing.LogCapture()
    monkeypatch.setattr(proxy, "log", structlog.wrap_logger(None, processors=[capture]))
    return capture


def events(capture: structlog.testing.LogCapture, name: str) -> list[MutableMapping[str, Any]]:
    return [entry for entry in capture.entries if entry["event"] == name]


async def test_refused_is_connect_error(
    aiohttp_server: ServerFactory, proxy_logs: structlog.testing.LogCapture
) -> None:
    async with refusing_target() as url:
        gateway = await start_gateway(aiohttp_server, upstreams={"up": url})
        status, _, _ = parse_response(await exchange(gateway.port, GET))
    assert status == 502
    assert [getattr(exc, "kind", None) for exc in gateway.failures] == ["connect_error"]
    assert gateway.headers_calls == []
    logged = events(proxy_logs, "upstream_connect_failed")
    assert [(entry["target"], entry["route"]) for entry in logged] == [(url, "all")]


async def test_slow_headers_time_out(aiohttp_server: ServerFactory) -> None:
    release = asyncio.Event()

    async def stall(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        await asyncio.wait_for(release.wait(), HANG_S)

    async with raw_upstream(stall) as url:
        upstream = {"url": url, "read_timeout_s": 0.1}
        gateway = await start_gateway(aiohttp_server, upstreams={"up": upstream})
        status, _, _ = parse_response(await exchange(gateway.port, GET))
        release.set()
    assert status == 504
    assert [getattr(exc, "kind", None) for exc in gateway.failures] == ["timeout"]


async def test_closed_before_headers(aiohttp_server: ServerFactory) -> None:
    """An upstream that takes the request and hangs up is a connect_error, not a retry."""
    accepted = 0

    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal accepted
        accepted += 1
        await read_head(reader)

    other_url, other_seen = await recording_upstream(aiohttp_server)
    async with raw_upstream(hang_up) as url:
        gateway = await start_gateway(aiohttp_server, upstreams={"up": [url, other_url]})
        post = b"POST / HTTP/1.1\r\nHost: c\r\nConnection: close\r\nContent-Length: 2\r\n\r\nhi"
        status, _, _ = parse_response(await exchange(gateway.port, post))
    assert status == 502
    assert [getattr(exc, "kind", None) for exc in gateway.failures] == ["connect_error"]
    assert accepted == 1
    assert other_seen == []


async def test_get_resent_to_same_target(aiohttp_server: ServerFactory) -> None:
    """aiohttp resends an idempotent request once to the same target, never to another one."""
    accepted = 0

    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal accepted
        accepted += 1
        await read_head(reader)

    other_url, other_seen = await recording_upstream(aiohttp_server)
    async with raw_upstream(hang_up) as url:
        gateway = await start_gateway(aiohttp_server, upstreams={"up": [url, other_url]})
        status, _, _ = parse_response(await exchange(gateway.port, GET))
    assert status == 502
    assert accepted == 2
    assert other_seen == []


async def test_refused_target_retried(
    aiohttp_server: ServerFactory, proxy_logs: structlog.testing.LogCapture
) -> None:
    """A refused target is skipped for the cool-down, and the request goes to the next one."""
    now = [0.0]
    url, seen = await recording_upstream(aiohttp_server)
    async with refusing_target() as refused:
        gateway = await start_gateway(
            aiohttp_server, upstreams={"up": [refused, url]}, clock=lambda: now[0]
        )
        statuses = []
        for _ in range(3):
            statuses.append(parse_response(await exchange(gateway.port, GET))[0])
        tried_early = len(events(proxy_logs, "upstream_connect_failed"))
        now[0] += COOL_DOWN_S
        for _ in range(2):
            statuses.append(parse_response(await exchange(gateway.port, GET))[0])
        tried_late = len(events(proxy_logs, "upstream_connect_failed"))
    assert statuses == [200] * 5
    assert len(seen) == 5
    assert tried_early == 1
    assert tried_late == 2
    assert gateway.failures == []


async def test_round_robin(aiohttp_server: ServerFactory) -> None:
    urls = []
    for name in (b"a", b"b"):
        url, _ = await recording_upstream(aiohttp_server, body=name)
        urls.append(url)
    gateway = await start_gateway(aiohttp_server, upstreams={"up": urls})
    bodies = [parse_response(await exchange(gateway.port, GET))[2] for _ in range(4)]
    assert bodies == [b"a", b"b", b"a", b"b"]


async def test_disconnect_cancels_waiting_upstream(aiohttp_server: ServerFactory) -> None:
    """A client that hangs up before response headers cancels the upstream call."""
    started, cancelled = asyncio.Event(), asyncio.Event()

    async def handle(request: web.Request) -> web.Response:
        started.set()
        try:
            await asyncio.wait_for(asyncio.Event().wait(), HANG_S)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return web.Response(text="too late")

    app = web.Application()
    app.router.add_get("/slow", handle)
    upstream = await aiohttp_server(app)
    gateway = await start_gateway(
        aiohttp_server, upstreams={"up": f"http://127.0.0.1:{upstream.port}"}
    )
    _, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
    writer.write(b"GET /slow HTTP/1.1\r\nHost: c\r\n\r\n")
    await asyncio.wait_for(started.wait(), HANG_S)
    writer.close()
    await asyncio.wait_for(cancelled.wait(), HANG_S)
    assert upstream.runner is not None
    assert upstream.runner.server is not None
    assert upstream.runner.server.connections == []
    assert gateway.headers_calls == []


async def test_disconnect_mid_stream_closes_upstream(aiohttp_server: ServerFactory) -> None:
    """A client that hangs up mid-body closes the upstream connection instead of pooling it."""
    cancelled = asyncio.Event()

    async def handle(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        await response.write(b"first-chunk")
        try:
            await asyncio.wait_for(asyncio.Event().wait(), HANG_S)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return response

    app = web.Application()
    app.router.add_get("/stream", handle)
    upstream = await aiohttp_server(app)
    gateway = await start_gateway(
        aiohttp_server, upstreams={"up": f"http://127.0.0.1:{upstream.port}"}
    )
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
    writer.write(b"GET /stream HTTP/1.1\r\nHost: c\r\n\r\n")
    received = b""
    while b"first-chunk" not in received:
        data = await asyncio.wait_for(reader.read(1024), HANG_S)
        assert data, "gateway closed before the first chunk"
        received += data
    writer.close()
    await asyncio.wait_for(cancelled.wait(), HANG_S)
    assert upstream.runner is not None
    assert upstream.runner.server is not None
    assert upstream.runner.server.connections == []


async def test_connections_reused(aiohttp_server: ServerFactory) -> None:
    """Completed responses return their upstream connection to the pool."""
    peers = []

    async def handle(request: web.Request) -> web.Response:
        peers.append(request.transport.get_extra_info("peername") if request.transport else None)
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/", handle)
    upstream = await aiohttp_server(app)
    gateway = await start_gateway(
        aiohttp_server, upstreams={"up": f"http://127.0.0.1:{upstream.port}"}
    )
    async with aiohttp.ClientSession() as client:
        for _ in range(3):
            async with client.get(gateway.url("/")) as response:
                await response.read()
    assert len(peers) == 3
    assert len(set(peers)) == 1


async def test_logs_hold_no_credentials(
    aiohttp_server: ServerFactory, proxy_logs: structlog.testing.LogCapture
) -> None:
    async with refusing_target() as url:
        gateway = await start_gateway(aiohttp_server, upstreams={"up": url})
        request = (
            b"GET /?api_key=s3cret-q HTTP/1.1\r\nHost: c\r\nConnection: close\r\n"
            b"Authorization: Bearer s3cret-a\r\nCookie: sid=s3cret-c\r\n\r\n"
        )
        await exchange(gateway.port, request)
    assert proxy_logs.entries
    assert "s3cret" not in repr(proxy_logs.entries)


def test_error_text_hides_query() -> None:
    """Errors that quote the request URL lose its query before they are logged."""
    exc = aiohttp.ConnectionTimeoutError("Connection timeout to host http://h:1/p?api_key=s3cret")
    text = proxy.describe_error(exc)
    assert "s3cret" not in text
    assert text == "ConnectionTimeoutError: Connection timeout to host http://h:1/p?..."

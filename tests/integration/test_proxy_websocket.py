"""WebSocket upgrades through the forwarder: subprotocol, query, messages and close codes."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import aiohttp
from aiohttp import WSMsgType, web
from yarl import URL

from tests.integration.test_proxy_harness import (
    Seen,
    ServerFactory,
    header_values,
    parse_response,
    refusing_target,
    start_gateway,
)

HANG_S = 30.0


@dataclass
class EchoUpstream:
    url: str
    seen: list[Seen] = field(default_factory=list)
    close_codes: list[int | None] = field(default_factory=list)
    closed: asyncio.Event = field(default_factory=asyncio.Event)


async def echo_upstream(aiohttp_server: ServerFactory) -> EchoUpstream:
    """Start a WebSocket upstream that speaks ``v2.chat``, echoes, and closes on "close"."""
    echo = EchoUpstream(url="")

    async def handle(request: web.Request) -> web.WebSocketResponse:
        echo.seen.append(Seen(request.method, request.raw_path, request.headers, b""))
        ws = web.WebSocketResponse(protocols=("v2.chat",))
        await ws.prepare(request)
        async for message in ws:
            if message.type is WSMsgType.TEXT and message.data == "close":
                await ws.close(code=4001, message=b"bye")
            elif message.type is WSMsgType.TEXT:
                await ws.send_str(f"echo:{message.data}")
            elif message.type is WSMsgType.BINARY:
                await ws.send_bytes(message.data[::-1])
        echo.close_codes.append(ws.close_code)
        echo.closed.set()
        return ws

    app = web.Application()
    app.router.add_get("/ws", handle)
    server = await aiohttp_server(app)
    echo.url = f"http://127.0.0.1:{server.port}"
    return echo


async def test_websocket_relays_messages(aiohttp_server: ServerFactory) -> None:
    echo = await echo_upstream(aiohttp_server)
    gateway = await start_gateway(aiohttp_server, upstreams={"up": echo.url})
    async with aiohttp.ClientSession() as client:
        ws = await client.ws_connect(
            URL(gateway.url("/ws?room=a%2Fb&x&y=1+2"), encoded=True),
            protocols=("v1.chat", "v2.chat"),
        )
        await ws.send_str("hi")
        text = await asyncio.wait_for(ws.receive(), HANG_S)
        await ws.send_bytes(b"abc")
        binary = await asyncio.wait_for(ws.receive(), HANG_S)
        await ws.send_str("close")
        closing = await asyncio.wait_for(ws.receive(), HANG_S)
        await ws.close()
    assert ws.protocol == "v2.chat"
    assert text.data == "echo:hi"
    assert binary.data == b"cba"
    assert closing.type is WSMsgType.CLOSE
    assert ws.close_code == 4001
    assert echo.seen[0].raw_path == "/ws?room=a%2Fb&x&y=1+2"
    assert echo.seen[0].headers.getall("Sec-WebSocket-Protocol") == ["v1.chat,v2.chat"]
    assert echo.seen[0].headers.getall("Gatekeeper-Tenant") == ["acme"]
    assert echo.seen[0].headers.getall("X-Forwarded-For") == ["127.0.0.1"]
    assert [call[0] for call in gateway.headers_calls] == [101]


async def test_websocket_client_close_code(aiohttp_server: ServerFactory) -> None:
    echo = await echo_upstream(aiohttp_server)
    gateway = await start_gateway(aiohttp_server, upstreams={"up": echo.url})
    async with aiohttp.ClientSession() as client:
        ws = await client.ws_connect(gateway.url("/ws"), protocols=("v2.chat",))
        await ws.send_str("ping")
        await asyncio.wait_for(ws.receive(), HANG_S)
        await ws.close(code=4002, message=b"done")
    await asyncio.wait_for(echo.closed.wait(), HANG_S)
    assert echo.close_codes == [4002]


async def test_websocket_101_headers(aiohttp_server: ServerFactory) -> None:
    """The gateway's extra headers ride on the 101 response, with the upstream's subprotocol."""
    echo = await echo_upstream(aiohttp_server)
    gateway = await start_gateway(aiohttp_server, upstreams={"up": echo.url})
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
    writer.write(
        b"GET /ws HTTP/1.1\r\nHost: c\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
        b"Sec-WebSocket-Protocol: v1.chat, v2.chat\r\n\r\n"
    )
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HANG_S)
    writer.close()
    status, headers, _ = parse_response(head)
    assert status == 101
    assert header_values(headers, "Ticket-Cost") == ["1"]
    assert header_values(headers, "Sec-WebSocket-Protocol") == ["v2.chat"]
    assert header_values(headers, "Sec-WebSocket-Accept") == ["s3pPLMBiTxaQ9kYGzzhZRbK+xOo="]
    assert header_values(headers, "Via") == ["1.1 gatekeeper"]


async def test_websocket_refused_upgrade(aiohttp_server: ServerFactory) -> None:
    """An upstream that responds to the upgrade with an error status passes that status on."""

    async def handle(request: web.Request) -> web.Response:
        return web.Response(status=403, text="no")

    app = web.Application()
    app.router.add_get("/ws", handle)
    upstream = await aiohttp_server(app)
    gateway = await start_gateway(
        aiohttp_server, upstreams={"up": f"http://127.0.0.1:{upstream.port}"}
    )
    async with aiohttp.ClientSession() as client:
        try:
            await client.ws_connect(gateway.url("/ws"))
            status = 101
        except aiohttp.WSServerHandshakeError as exc:
            status = exc.status
    assert status == 403
    assert [call[0] for call in gateway.headers_calls] == [403]


async def test_websocket_upstream_refused(aiohttp_server: ServerFactory) -> None:
    async with refusing_target() as url:
        gateway = await start_gateway(aiohttp_server, upstreams={"up": url})
        async with aiohttp.ClientSession() as client:
            try:
                await client.ws_connect(gateway.url("/ws"))
                status = 101
            except aiohttp.WSServerHandshakeError as exc:
                status = exc.status
    assert status == 502
    assert [getattr(exc, "kind", None) for exc in gateway.failures] == ["connect_error"]

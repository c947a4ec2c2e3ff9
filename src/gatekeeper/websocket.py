"""WebSocket relay: one upstream WebSocket per client WebSocket, messages copied both ways.

The gateway connects to the upstream first, so the upstream picks the subprotocol and the
client is offered exactly that one. Each side negotiates its own compression and replies to
its own pings. Text and binary messages are copied whole, and close codes are passed on.
"""

from __future__ import annotations

import asyncio
from contextvars import ContextVar
from types import SimpleNamespace

import aiohttp
import structlog
from aiohttp import WSMsgType, web
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

log = structlog.get_logger("gatekeeper.proxy")

# The handshake response is captured by a trace hook, because the WebSocket client does not
# expose the upstream's 101 headers. Each forward() sets its own list in its context.
_handshake_headers: ContextVar[list[CIMultiDictProxy[str]] | None] = ContextVar(
    "gatekeeper_websocket_handshake", default=None
)

# Close codes that may not be sent in a close frame (RFC 6455 section 7.4.1).
RESERVED_CLOSE_CODES = frozenset({1005, 1006, 1015})
GOING_AWAY = 1001
# Upper bound on passing a close handshake on, after one side has closed.
CLOSE_TIMEOUT_S = 10.0

WebSocket = web.WebSocketResponse | aiohttp.ClientWebSocketResponse
# An open upstream WebSocket and the headers of its 101 response.
Connected = tuple[aiohttp.ClientWebSocketResponse, CIMultiDictProxy[str]]


def is_upgrade(request: web.Request) -> bool:
    """Return whether the request is a WebSocket upgrade."""
    if request.method != "GET" or request.headers.get("Upgrade", "").lower() != "websocket":
        return False
    tokens = {
        token.strip().lower()
        for value in request.headers.getall("Connection", ())
        for token in value.split(",")
    }
    return "upgrade" in tokens


def offered_protocols(request: web.Request) -> tuple[str, ...]:
    """Return the subprotocols the client offers, in its order of preference."""
    return tuple(
        token.strip()
        for value in request.headers.getall("Sec-WebSocket-Protocol", ())
        for token in value.split(",")
        if token.strip()
    )


def handshake_trace() -> aiohttp.TraceConfig:
    """Create the client trace hook that records each WebSocket handshake's headers."""
    trace = aiohttp.TraceConfig()
    trace.on_request_end.append(_record_handshake)
    return trace


async def _record_handshake(
    session: aiohttp.ClientSession,
    context: SimpleNamespace,
    params: aiohttp.TraceRequestEndParams,
) -> None:
    slot = _handshake_headers.get()
    if slot is not None:
        slot.append(params.response.headers)


async def connect(
    session: aiohttp.ClientSession,
    url: URL,
    *,
    headers: CIMultiDict[str],
    protocols: tuple[str, ...],
    max_msg_size: int,
) -> Connected:
    """Open the upstream WebSocket.

    Args:
        session: the forwarder's client session.
        url: the upstream URL, already encoded.
        headers: the upstream request headers, without the client's handshake headers.
        protocols: the subprotocols the client offered.
        max_msg_size: the largest message accepted from the upstream, in bytes.

    Returns:
        The upstream WebSocket and the headers of its 101 response.

    Raises:
        aiohttp.WSServerHandshakeError: the upstream responded without switching protocols.
        aiohttp.ClientError: the connection failed.
    """
    slot: list[CIMultiDictProxy[str]] = []
    token = _handshake_headers.set(slot)
    try:
        upstream = await session.ws_connect(
            url,
            headers=headers,
            protocols=protocols,
            compress=0,
            max_msg_size=max_msg_size,
        )
    finally:
        _handshake_headers.reset(token)
    handshake = slot[-1] if slot else CIMultiDictProxy(CIMultiDict())
    return upstream, handshake


async def relay(client: web.WebSocketResponse, upstream: aiohttp.ClientWebSocketResponse) -> None:
    """Copy messages both ways until either side closes, then close the other side the same way.

    The pump that receives a close frame passes its code on. Closing a WebSocket that the other
    pump is reading from ends that pump's ``receive`` with ``CLOSING``, so both pumps finish.
    The close codes are also recorded, because the handler may be cancelled (the client's
    TCP connection closing right after its close frame) before a pump has passed one on.
    """
    close_with: dict[str, tuple[int, bytes]] = {}
    pumps = [
        asyncio.create_task(_pump(client, upstream, close_with, sink_name="upstream")),
        asyncio.create_task(_pump(upstream, client, close_with, sink_name="client")),
    ]
    try:
        await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        # The other pump may still be passing on the close handshake.
        await asyncio.wait(pumps, timeout=CLOSE_TIMEOUT_S)
    finally:
        for pump in pumps:
            pump.cancel()
        await asyncio.gather(*pumps, return_exceptions=True)
        code, reason = close_with.get("upstream", (GOING_AWAY, b""))
        await upstream.close(code=code, message=reason)
        code, reason = close_with.get("client", (GOING_AWAY, b""))
        await client.close(code=code, message=reason)


async def _pump(
    source: WebSocket,
    sink: WebSocket,
    close_with: dict[str, tuple[int, bytes]],
    *,
    sink_name: str,
) -> None:
    """Copy messages from ``source`` to ``sink``, then pass on how ``source`` ended."""
    while True:
        message = await source.receive()
        if message.type in (WSMsgType.TEXT, WSMsgType.BINARY):
            try:
                await _send(sink, message)
            except ConnectionResetError:
                log.info("websocket_peer_gone", side=sink_name)
                return
            continue
        if message.type is WSMsgType.CLOSING:
            # The other pump is closing ``source`` and passes the close on itself.
            return
        if message.type is WSMsgType.CLOSE and message.data not in RESERVED_CLOSE_CODES:
            close_with[sink_name] = (message.data, (message.extra or "").encode())
        else:
            # CLOSED, ERROR, or a close frame without a sendable code: the peer went away.
            close_with[sink_name] = (GOING_AWAY, b"")
        code, reason = close_with[sink_name]
        await sink.close(code=code, message=reason)
        return


async def _send(sink: WebSocket, message: aiohttp.WSMessage) -> None:
    if message.type is WSMsgType.TEXT:
        await sink.send_str(message.data)
    else:
        await sink.send_bytes(message.data)

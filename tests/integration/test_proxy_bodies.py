"""Request and response bodies through the forwarder: framing, limits, streaming, encodings.

Streaming tests run in lock-step: one side waits for the other side's progress before
sending more, so a gateway that holds data back deadlocks. The ``asyncio.wait_for`` limits
only turn such a deadlock into a failure; they never measure speed.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import tracemalloc
from collections.abc import AsyncIterator, Callable

import aiohttp
from aiohttp import web

from tests.integration.test_proxy_harness import (
    GET,
    ServerFactory,
    exchange,
    header_values,
    parse_response,
    raw_upstream,
    read_head,
    recording_upstream,
    start_gateway,
)

HANG_S = 30.0


async def test_chunked_request_reframed(aiohttp_server: ServerFactory) -> None:
    """A chunked upload reaches the upstream chunked again, with the same bytes."""
    url, seen = await recording_upstream(aiohttp_server)
    gateway = await start_gateway(aiohttp_server, upstreams={"up": url})
    request = (
        b"POST /up HTTP/1.1\r\nHost: c\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
    )
    status, _, _ = parse_response(await exchange(gateway.port, request))
    assert status == 200
    assert seen[0].body == b"hello world"
    assert seen[0].headers.getall("Transfer-Encoding") == ["chunked"]
    assert "Content-Length" not in seen[0].headers


async def test_content_length_kept(aiohttp_server: ServerFactory) -> None:
    url, seen = await recording_upstream(aiohttp_server)
    gateway = await start_gateway(aiohttp_server, upstreams={"up": url})
    request = (
        b"PUT /up HTTP/1.1\r\nHost: c\r\nConnection: close\r\nContent-Length: 11\r\n\r\n"
        b"hello world"
    )
    await exchange(gateway.port, request)
    assert seen[0].body == b"hello world"
    assert seen[0].headers.getall("Content-Length") == ["11"]
    assert "Transfer-Encoding" not in seen[0].headers


async def test_expect_continue_answered_here(aiohttp_server: ServerFactory) -> None:
    """The gateway replies to ``Expect: 100-continue`` itself and forwards only the body."""
    url, seen = await recording_upstream(aiohttp_server)
    gateway = await start_gateway(aiohttp_server, upstreams={"up": url})
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
    writer.write(
        b"POST /up HTTP/1.1\r\nHost: c\r\nConnection: close\r\nContent-Length: 5\r\n"
        b"Expect: 100-continue\r\n\r\n"
    )
    interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HANG_S)
    writer.write(b"hello")
    status, _, _ = parse_response(await reader.read())
    writer.close()
    assert interim.startswith(b"HTTP/1.1 100")
    assert status == 200
    assert seen[0].body == b"hello"
    assert "Expect" not in seen[0].headers


async def test_chunked_over_limit_aborts(aiohttp_server: ServerFactory) -> None:
    """A chunked body past the route's limit aborts the upstream call with BodyTooLarge.

    The client sends the rest of its body only after the upstream got the first chunk, so
    the upstream is mid-request when the limit is passed and must see the abort.
    """
    received: list[int] = []
    first_chunk = asyncio.Event()
    upstream_ended = asyncio.Event()

    async def handle(request: web.Request) -> web.Response:
        try:
            async for chunk in request.content.iter_any():
                received.append(len(chunk))
                first_chunk.set()
        finally:
            upstream_ended.set()
        return web.Response(text="complete")

    app = web.Application()
    app.router.add_post("/up", handle)
    upstream = await aiohttp_server(app)
    route = {"name": "small", "match": {"path_prefix": "/"}, "upstream": "up",
             "max_body_bytes": 1000}
    gateway = await start_gateway(
        aiohttp_server, upstreams={"up": f"http://127.0.0.1:{upstream.port}"}, routes=[route]
    )
    chunk = b"190\r\n" + b"x" * 400 + b"\r\n"
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
    writer.write(
        b"POST /up HTTP/1.1\r\nHost: c\r\nConnection: close\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n" + chunk
    )
    await asyncio.wait_for(first_chunk.wait(), HANG_S)
    writer.write(chunk * 4 + b"0\r\n\r\n")
    raw = await reader.read()
    writer.close()
    await asyncio.wait_for(upstream_ended.wait(), HANG_S)
    status, _, _ = parse_response(raw)
    assert status == 413
    assert [type(exc).__name__ for exc in gateway.failures] == ["BodyTooLarge"]
    assert sum(received) <= 1000
    assert gateway.headers_calls == []


async def test_declared_length_over_limit(aiohttp_server: ServerFactory) -> None:
    url, seen = await recording_upstream(aiohttp_server)
    route = {"name": "small", "match": {"path_prefix": "/"}, "upstream": "up",
             "max_body_bytes": 10}
    gateway = await start_gateway(aiohttp_server, upstreams={"up": url}, routes=[route])
    request = (
        b"POST / HTTP/1.1\r\nHost: c\r\nConnection: close\r\nContent-Length: 11\r\n\r\n"
        b"hello world"
    )
    status, _, _ = parse_response(await exchange(gateway.port, request))
    assert status == 413
    assert seen == []


async def test_large_upload_streams(aiohttp_server: ServerFactory) -> None:
    """A 64 MiB upload flows through in lock-step, and the process never holds it whole.

    The client sends the next chunk only once the upstream has received all but the last
    ``window`` bytes, so a gateway that stores the body before forwarding deadlocks. The
    traced peak of Python memory (client, gateway and upstream share this process) stays
    far below the body size.
    """
    chunk_size, total, window = 64 * 1024, 64 * 1024 * 1024, 32 * 1024 * 1024
    received = 0
    progress = asyncio.Condition()
    upstream_digest = hashlib.sha256()

    async def handle(request: web.Request) -> web.Response:
        nonlocal received
        async for chunk in request.content.iter_any():
            upstream_digest.update(chunk)
            async with progress:
                received += len(chunk)
                progress.notify_all()
        return web.Response(text=str(received))

    app = web.Application(client_max_size=total * 2)
    app.router.add_post("/up", handle)
    upstream = await aiohttp_server(app)
    gateway = await start_gateway(
        aiohttp_server, upstreams={"up": f"http://127.0.0.1:{upstream.port}"},
        proxy={"max_body_bytes": total},
    )
    client_digest = hashlib.sha256()

    def upstream_reached(floor: int) -> Callable[[], bool]:
        return lambda: received >= floor

    async def body() -> AsyncIterator[bytes]:
        for offset in range(0, total, chunk_size):
            async with progress:
                await asyncio.wait_for(progress.wait_for(upstream_reached(offset - window)), HANG_S)
            chunk = offset.to_bytes(8, "big") * (chunk_size // 8)
            client_digest.update(chunk)
            yield chunk

    tracemalloc.start()
    try:
        async with aiohttp.ClientSession() as client:
            response = await client.post(gateway.url("/up"), data=body())
            text = await response.text()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert response.status == 200
    assert text == str(total)
    assert upstream_digest.hexdigest() == client_digest.hexdigest()
    assert peak < total // 4


async def test_gzip_byte_exact(aiohttp_server: ServerFactory) -> None:
    """A compressed response passes unchanged, with its encoding and length."""
    compressed = gzip.compress(b"gatekeeper " * 5000)
    app = web.Application()

    async def handle(request: web.Request) -> web.Response:
        return web.Response(body=compressed, headers={"Content-Encoding": "gzip"},
                            content_type="text/plain")

    app.router.add_get("/z", handle)
    upstream = await aiohttp_server(app)
    gateway = await start_gateway(aiohttp_server,
                                  upstreams={"up": f"http://127.0.0.1:{upstream.port}"})
    request = b"GET /z HTTP/1.1\r\nHost: c\r\nConnection: close\r\nAccept-Encoding: gzip\r\n\r\n"
    status, headers, body = parse_response(await exchange(gateway.port, request))
    assert status == 200
    assert body == compressed
    assert header_values(headers, "Content-Encoding") == ["gzip"]
    assert header_values(headers, "Content-Length") == [str(len(compressed))]
    assert header_values(headers, "Transfer-Encoding") == []


async def test_sse_lockstep(aiohttp_server: ServerFactory) -> None:
    """Each event reaches the client before the upstream writes the next one."""
    delivered = [asyncio.Event() for _ in range(5)]

    async def handle(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for number, event in enumerate(delivered):
            await response.write(f"data: {number}\n\n".encode())
            await asyncio.wait_for(event.wait(), HANG_S)
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_get("/events", handle)
    upstream = await aiohttp_server(app)
    gateway = await start_gateway(aiohttp_server,
                                  upstreams={"up": f"http://127.0.0.1:{upstream.port}"})
    events = []
    async with aiohttp.ClientSession() as client:
        response = await client.get(gateway.url("/events"))
        for event in delivered:
            line = await asyncio.wait_for(response.content.readuntil(b"\n\n"), HANG_S)
            events.append(line)
            event.set()
        rest = await response.read()
    assert events == [f"data: {n}\n\n".encode() for n in range(5)]
    assert rest == b""
    assert response.headers["Content-Type"] == "text/event-stream"


async def test_quiet_stream_not_cut(aiohttp_server: ServerFactory) -> None:
    """The read timeout ends when headers arrive, so a pause mid-body is not a timeout."""
    resume = asyncio.Event()

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nfirst")
        await writer.drain()
        await resume.wait()
        writer.write(b"-last")
        await writer.drain()

    async with raw_upstream(answer) as url:
        upstream = {"url": url, "read_timeout_s": 0.05}
        gateway = await start_gateway(aiohttp_server, upstreams={"up": upstream})
        async with aiohttp.ClientSession() as client:
            response = await client.get(gateway.url("/"))
            first = await response.content.readexactly(5)
            # Several read timeouts pass before the rest of the body is sent.
            await asyncio.sleep(0.3)
            resume.set()
            rest = await response.read()
    assert first + rest == b"first-last"


async def test_broken_length_body_aborts_client(aiohttp_server: ServerFactory) -> None:
    """An upstream that dies mid-body leaves the client with an incomplete response."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789")
        await writer.drain()

    async with raw_upstream(answer) as url:
        gateway = await start_gateway(aiohttp_server, upstreams={"up": url})
        async with aiohttp.ClientSession() as client:
            response = await client.get(gateway.url("/"))
            try:
                await response.read()
                error = None
            except aiohttp.ClientPayloadError as exc:
                error = exc
    assert response.status == 200
    assert error is not None
    assert gateway.failures == []
    assert [call[0] for call in gateway.headers_calls] == [200]


async def test_broken_chunked_body_aborts_client(aiohttp_server: ServerFactory) -> None:
    """A truncated chunked upstream body never gets the final chunk on the client side."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
        await writer.drain()

    async with raw_upstream(answer) as url:
        gateway = await start_gateway(aiohttp_server, upstreams={"up": url})
        raw = await exchange(gateway.port, GET)
    status, _, body = parse_response(raw)
    assert status == 200
    assert body == b"5\r\nhello\r\n"
    assert gateway.failures == []


async def test_head_keeps_length(aiohttp_server: ServerFactory) -> None:
    url, _ = await recording_upstream(aiohttp_server, body=b"x" * 1234)
    gateway = await start_gateway(aiohttp_server, upstreams={"up": url})
    raw = await exchange(gateway.port, b"HEAD / HTTP/1.1\r\nHost: c\r\nConnection: close\r\n\r\n")
    status, headers, body = parse_response(raw)
    assert status == 200
    assert header_values(headers, "Content-Length") == ["1234"]
    assert body == b""


async def test_no_content_has_no_body(aiohttp_server: ServerFactory) -> None:
    url, _ = await recording_upstream(aiohttp_server, status=204, body=b"")
    gateway = await start_gateway(aiohttp_server, upstreams={"up": url})
    raw = await exchange(gateway.port, b"DELETE / HTTP/1.1\r\nHost: c\r\nConnection: close\r\n\r\n")
    status, headers, body = parse_response(raw)
    assert status == 204
    assert header_values(headers, "Transfer-Encoding") == []
    assert body == b""

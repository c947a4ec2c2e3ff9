"""Upstream servers for the benchmarks, run as ``python bench/upstream.py MODE --port N``.

``fast`` is a minimal HTTP/1.1 responder on a raw uvloop protocol: every request, whatever
its method and path, gets the same small 200 response on a keep-alive connection. It skips
aiohttp on purpose, because the upstream must be much faster than the proxies it feeds, or
the benchmark measures the upstream. It reads ``Content-Length`` bodies and rejects chunked
ones (501), which the throughput phases never send.

``stream`` is an aiohttp app for the memory phase: ``POST /upload`` reads and drops the
body and returns its size; ``GET /download?bytes=N`` streams N zero bytes.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import cast

import uvloop
from aiohttp import web

BODY = b"Hello, world\n"
RESPONSE = (
    b"HTTP/1.1 200 OK\r\n"
    b"Content-Type: text/plain\r\n"
    b"Content-Length: " + str(len(BODY)).encode() + b"\r\n"
    b"\r\n" + BODY
)
NOT_IMPLEMENTED = (
    b"HTTP/1.1 501 Not Implemented\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
)
MAX_HEADER_BYTES = 65536
CHUNK_BYTES = 256 * 1024


class FastResponder(asyncio.Protocol):
    """One keep-alive connection of the ``fast`` upstream; handles pipelined requests."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.body_left = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        responses = []
        close = False
        while not close:
            if self.body_left:
                skipped = min(self.body_left, len(self.buffer))
                del self.buffer[:skipped]
                self.body_left -= skipped
                if self.body_left:
                    break
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                close = len(self.buffer) > MAX_HEADER_BYTES
                break
            head = bytes(self.buffer[:end]).lower()
            del self.buffer[: end + 4]
            if b"transfer-encoding:" in head:
                responses.append(NOT_IMPLEMENTED)
                close = True
                break
            self.body_left = _content_length(head)
            responses.append(RESPONSE)
            close = b"connection: close" in head
        if self.transport is None:
            return
        if responses:
            self.transport.write(b"".join(responses))
        if close:
            self.transport.close()


def _content_length(head: bytes) -> int:
    marker = b"\r\ncontent-length:"
    start = head.find(marker)
    if start < 0:
        return 0
    value = head[start + len(marker):].split(b"\r\n", 1)[0]
    return int(value.strip() or b"0")


async def serve_fast(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(FastResponder, "127.0.0.1", port, backlog=4096)
    async with server:
        await server.serve_forever()


async def upload(request: web.Request) -> web.Response:
    received = 0
    async for chunk in request.content.iter_chunked(CHUNK_BYTES):
        received += len(chunk)
    return web.json_response({"bytes": received})


async def download(request: web.Request) -> web.StreamResponse:
    total = int(request.query.get("bytes", "0"))
    response = web.StreamResponse()
    response.content_length = total
    response.content_type = "application/octet-stream"
    await response.prepare(request)
    chunk = bytes(CHUNK_BYTES)
    left = total
    while left:
        piece = chunk if left >= CHUNK_BYTES else chunk[:left]
        await response.write(piece)
        left -= len(piece)
    await response.write_eof()
    return response


def build_stream_app() -> web.Application:
    app = web.Application(client_max_size=2**40)
    app.router.add_post("/upload", upload)
    app.router.add_get("/download", download)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["fast", "stream"], help="which upstream to run")
    parser.add_argument("--port", type=int, required=True, help="TCP port on 127.0.0.1")
    args = parser.parse_args()
    if args.mode == "fast":
        uvloop.run(serve_fast(args.port))
    else:
        web.run_app(build_stream_app(), host="127.0.0.1", port=args.port, print=None,
                    access_log=None, loop=uvloop.new_event_loop())


if __name__ == "__main__":
    main()

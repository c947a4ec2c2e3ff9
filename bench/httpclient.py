"""A minimal HTTP/1.1 client connection for the load generator: one request at a time.

It reads responses framed by ``Content-Length`` or ``Transfer-Encoding: chunked`` and
drops the body. It sends exactly the bytes it is given and checks nothing else, which keeps
the client's own cost per request small next to the servers it measures.
"""

from __future__ import annotations

import asyncio
from typing import cast

MAX_HEADER_BYTES = 65536


class ResponseError(Exception):
    """The server closed the connection or sent a response this client cannot frame."""


class HttpConnection(asyncio.Protocol):
    """One keep-alive connection; ``exchange`` sends a request and waits for the response."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.waiter: asyncio.Future[int] | None = None
        self.closed = False
        self.status = 0
        self.body_left = 0
        self.chunked = False
        self.in_body = False
        self.close_after = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail(ResponseError(f"connection closed: {exc or 'by the server'}"))

    async def exchange(self, request: bytes) -> int:
        """Send ``request`` and return the response status once the whole body arrived."""
        if self.closed or self.transport is None:
            raise ResponseError("connection is closed")
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        return await self.waiter

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        try:
            while self._parse_step():
                pass
        except (ValueError, ResponseError) as exc:
            self._fail(ResponseError(f"invalid response: {exc}"))
            if self.transport is not None:
                self.transport.close()

    def _parse_step(self) -> bool:
        """Consume what the buffer allows; return True when another step may progress."""
        if not self.in_body:
            return self._parse_head()
        if self.chunked:
            return self._parse_chunk()
        consumed = min(self.body_left, len(self.buffer))
        del self.buffer[:consumed]
        self.body_left -= consumed
        if self.body_left == 0:
            self._finish()
            return bool(self.buffer)
        return False

    def _parse_head(self) -> bool:
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self.buffer) > MAX_HEADER_BYTES:
                raise ResponseError("response header is too large")
            return False
        head = bytes(self.buffer[:end]).lower()
        del self.buffer[: end + 4]
        self.status = int(head[9:12])
        self.chunked = b"\r\ntransfer-encoding: chunked" in head
        self.body_left = _header_int(head, b"content-length") if not self.chunked else 0
        self.close_after = b"\r\nconnection: close" in head
        self.in_body = True
        return True

    def _parse_chunk(self) -> bool:
        line_end = self.buffer.find(b"\r\n")
        if line_end < 0:
            return False
        size = int(bytes(self.buffer[:line_end]).split(b";")[0], 16)
        if size == 0:
            # The last chunk is followed by optional trailer lines and an empty line.
            if self.buffer[line_end + 2 : line_end + 4] == b"\r\n":
                del self.buffer[: line_end + 4]
            else:
                trailer_end = self.buffer.find(b"\r\n\r\n", line_end)
                if trailer_end < 0:
                    return False
                del self.buffer[: trailer_end + 4]
            self._finish()
            return bool(self.buffer)
        if len(self.buffer) < line_end + 2 + size + 2:
            return False
        del self.buffer[: line_end + 2 + size + 2]
        return True

    def _finish(self) -> None:
        self.in_body = False
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(self.status)
        if self.close_after and self.transport is not None:
            self.closed = True
            self.transport.close()

    def _fail(self, exc: ResponseError) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(exc)


def _header_int(head: bytes, name: bytes) -> int:
    marker = b"\r\n" + name + b":"
    start = head.find(marker)
    if start < 0:
        return 0
    return int(head[start + len(marker):].split(b"\r\n", 1)[0].strip() or b"0")

"""Client request checks and the request body stream, used before and while forwarding.

The gateway calls ``check_request_framing`` and ``declared_too_large`` before charging, so a
request that cannot be forwarded safely is rejected without touching any balance.
``RequestBody`` streams the body to the upstream and stops it at the body limit.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from gatekeeper import errors
from gatekeeper.config.model import Proxy as ProxyConfig
from gatekeeper.config.model import Route

DIGITS = re.compile(r"[0-9]+")


class BodyTooLarge(Exception):
    """The streamed request body passed the body limit; the upstream call was aborted."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"The request body exceeds the limit of {limit} bytes.")
        self.limit = limit


def body_limit(route: Route, proxy_config: ProxyConfig) -> int:
    """Return the request body limit in bytes: the route's, else the proxy default."""
    if route.max_body_bytes is not None:
        return route.max_body_bytes
    return proxy_config.max_body_bytes


def declared_too_large(request: web.Request, route: Route, proxy_config: ProxyConfig) -> bool:
    """Return whether the request's ``Content-Length`` already exceeds the body limit.

    The gateway calls this before charging; a chunked body is checked while it streams.
    """
    length = request.content_length
    return length is not None and length > body_limit(route, proxy_config)


def check_request_framing(request: web.Request) -> None:
    """Reject request framings that two HTTP parsers could read differently.

    aiohttp's parser (3.14, both the C and the Python one) already rejects with 400
    ``Content-Length`` with ``Transfer-Encoding``, repeated or listed ``Content-Length``,
    and repeated ``Transfer-Encoding``. It accepts transfer codings before ``chunked``
    (``gzip, chunked``) and ``Transfer-Encoding`` in HTTP/1.0, which this check rejects;
    the other checks repeat the parser's, in case it is replaced.

    Args:
        request: the client request, before its body is read.

    Raises:
        errors.BadRequest: the framing is ambiguous or uses an unsupported coding.
    """
    lengths = request.headers.getall("Content-Length", [])
    codings = request.headers.getall("Transfer-Encoding", [])
    if lengths and codings:
        raise errors.BadRequest(
            "The request has both Content-Length and Transfer-Encoding. Send only one."
        )
    if len(lengths) > 1 or (lengths and not DIGITS.fullmatch(lengths[0].strip())):
        raise errors.BadRequest(
            f"The request's Content-Length {', '.join(lengths)!r} is invalid. "
            "Send one decimal length."
        )
    if not codings:
        return
    if request.version < aiohttp.HttpVersion11:
        raise errors.BadRequest("Transfer-Encoding is not allowed in an HTTP/1.0 request.")
    tokens = [token.strip().lower() for value in codings for token in value.split(",")]
    if tokens != ["chunked"]:
        raise errors.BadRequest(
            f"Transfer-Encoding {', '.join(codings)!r} is not supported. Use 'chunked' alone."
        )


def raw_query(request: web.Request) -> str:
    """Return ``?`` and the query exactly as the client sent it, or ``""`` without one."""
    _, separator, query = request.raw_path.partition("?")
    return separator + query if query else ""


class RequestBody:
    """The client's request body, streamed to the upstream and counted against the limit.

    Args:
        content: the client request's body stream.
        limit: the body limit in bytes.
    """

    def __init__(self, content: aiohttp.StreamReader, limit: int) -> None:
        self._content = content
        self._limit = limit
        self.sent = 0
        self.too_large = False
        self.client_failed = False

    async def chunks(self) -> AsyncIterator[bytes]:
        """Yield the body as it arrives, and raise ``BodyTooLarge`` past the limit."""
        try:
            async for chunk in self._content.iter_any():
                self.sent += len(chunk)
                if self.sent > self._limit:
                    self.too_large = True
                    raise BodyTooLarge(self._limit)
                yield chunk
        except (ConnectionResetError, HttpProcessingError):
            # The client went away or broke its own framing while uploading.
            self.client_failed = True
            raise

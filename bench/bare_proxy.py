"""Baseline: the least an aiohttp + uvloop reverse proxy must do, with nothing of gatekeeper.

Run as ``python bench/bare_proxy.py --port N --upstream http://127.0.0.1:M``. It streams
the request body to the upstream and the response body back chunk by chunk, strips
hop-by-hop headers in both directions (RFC 9110 section 7.6.1, plus the names listed in
``Connection``) and reuses upstream connections through one keep-alive ``ClientSession``.
gatekeeper's overhead is measured against this proxy, so it must stay honest: cut nothing
that a correct proxy needs.
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator

import aiohttp
import uvloop
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection",
    "te", "trailer", "transfer-encoding", "upgrade",
})
CHUNK_BYTES = 64 * 1024
SESSION = web.AppKey("session", aiohttp.ClientSession)
UPSTREAM = web.AppKey("upstream", str)


def end_to_end(headers: CIMultiDictProxy[str], *, drop: frozenset[str]) -> CIMultiDict[str]:
    """Copy ``headers`` without hop-by-hop ones, those named in Connection, and ``drop``."""
    named = {
        token.strip().lower()
        for value in headers.getall("Connection", ())
        for token in value.split(",")
    }
    copied: CIMultiDict[str] = CIMultiDict()
    for name, value in headers.items():
        lowered = name.lower()
        if lowered in HOP_BY_HOP or lowered in named or lowered in drop:
            continue
        copied.add(name, value)
    return copied


async def forward(request: web.Request) -> web.StreamResponse:
    session = request.app[SESSION]
    headers = end_to_end(request.headers, drop=frozenset({"host"}))
    body = request.content if request.body_exists else None
    async with session.request(
        request.method,
        request.app[UPSTREAM] + request.raw_path,
        headers=headers,
        data=body,
        allow_redirects=False,
    ) as upstream:
        response = web.StreamResponse(
            status=upstream.status,
            reason=upstream.reason,
            headers=end_to_end(upstream.headers, drop=frozenset({"content-length"})),
        )
        if upstream.content_length is not None:
            response.content_length = upstream.content_length
        await response.prepare(request)
        async for chunk in upstream.content.iter_chunked(CHUNK_BYTES):
            await response.write(chunk)
        await response.write_eof()
        return response


async def session_context(app: web.Application) -> AsyncIterator[None]:
    connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=60)
    session = aiohttp.ClientSession(
        connector=connector,
        auto_decompress=False,
        skip_auto_headers=("User-Agent", "Accept-Encoding"),
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=2),
    )
    app[SESSION] = session
    yield
    await session.close()


def build_app(upstream: str) -> web.Application:
    app = web.Application(client_max_size=2**40)
    app[UPSTREAM] = upstream.rstrip("/")
    app.cleanup_ctx.append(session_context)
    app.router.add_route("*", "/{tail:.*}", forward)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True, help="TCP port on 127.0.0.1")
    parser.add_argument("--upstream", required=True, help="upstream base URL, http://host:port")
    args = parser.parse_args()
    web.run_app(build_app(args.upstream), host="127.0.0.1", port=args.port, print=None,
                access_log=None, loop=uvloop.new_event_loop())


if __name__ == "__main__":
    main()

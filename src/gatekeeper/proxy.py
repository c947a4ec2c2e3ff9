"""Streaming forwarder: sends a matched, charged request to its upstream and streams the reply.

Map of the module:

- ``check_request_framing`` and ``declared_too_large`` (from ``framing``, re-exported here)
  are the checks the gateway runs before charging.
- ``Forwarder.forward`` picks a target (``upstreams``), builds the headers (``headers``),
  streams the request body through ``RequestBody`` and the response back chunk by chunk,
  or relays a WebSocket (``websocket``).
- A failure before the upstream's response headers raises ``UpstreamFailure`` or
  ``BodyTooLarge``, so the gateway can refund. After the headers nothing is raised: a broken
  upstream body ends the client response by closing its connection, and the charge is kept.

NOTE: the gateway's aiohttp server must run with ``handler_cancellation=True``. Without it, a
client that disconnects while the upstream is still working does not cancel the upstream call.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Literal, TypeVar

import aiohttp
import structlog
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from gatekeeper import errors, websocket
from gatekeeper.config.model import Proxy as ProxyConfig
from gatekeeper.config.model import Route, Upstream
from gatekeeper.framing import (
    BodyTooLarge,
    RequestBody,
    body_limit,
    check_request_framing,
    declared_too_large,
    raw_query,
)
from gatekeeper.headers import (
    VIA_NAME,
    TrustedProxies,
    client_response_headers,
    upstream_request_headers,
)
from gatekeeper.upstreams import Targets

__all__ = [
    "BodyTooLarge",
    "Forwarder",
    "OnHeaders",
    "UpstreamFailure",
    "check_request_framing",
    "declared_too_large",
    "describe_error",
]

log = structlog.get_logger("gatekeeper.proxy")

T = TypeVar("T")
FailureKind = Literal["connect_error", "timeout"]
OnHeaders = Callable[[int, "CIMultiDictProxy[str]"], Awaitable[Mapping[str, str]]]

# The client library adds these when they are missing, but a proxy sends only what the client sent.
SKIP_AUTO_HEADERS = ("User-Agent", "Accept", "Accept-Encoding", "Content-Type")
# Some aiohttp errors quote the full request URL, whose query may carry credentials.
QUERY_IN_TEXT = re.compile(r"\?[^\s'\"<>]*")


class UpstreamFailure(Exception):
    """The upstream produced no response headers: it was unreachable or too slow.

    Args:
        kind: ``connect_error`` (refused, DNS, connect timeout, or the connection closed
            before response headers) or ``timeout`` (no headers within ``read_timeout_s``).
        detail: one sentence for logs and the problem body.
    """

    def __init__(self, kind: FailureKind, detail: str) -> None:
        super().__init__(detail)
        self.kind: FailureKind = kind
        self.detail = detail


def describe_error(exc: BaseException) -> str:
    """Return an error's type and message for logs, with any URL query replaced by ``?...``."""
    return QUERY_IN_TEXT.sub("?...", f"{type(exc).__name__}: {exc}")


class Forwarder:
    """Forwards requests to upstreams over one pooled client session.

    Args:
        upstreams: the configured upstreams by name.
        proxy: the ``proxy`` config section (trusted proxies, default body limit).
        clock: monotonic seconds for target cool-downs; tests pass their own.
    """

    def __init__(
        self,
        upstreams: Mapping[str, Upstream],
        proxy: ProxyConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._upstreams = dict(upstreams)
        # Built once per upstream: a ClientTimeout per request cost about 6 µs (py-spy).
        self._timeouts = {name: _client_timeout(upstream) for name, upstream in upstreams.items()}
        self._proxy = proxy
        self._trusted = TrustedProxies(proxy.trusted_proxies)
        self._targets = {name: Targets(up.url, clock=clock) for name, up in upstreams.items()}
        self._session: aiohttp.ClientSession | None = None
        self._websocket_session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        """Open the client sessions. Call it once before the first ``forward``."""
        self._session = _client_session()
        # Only WebSocket upgrades need the handshake trace. Its hooks cost every request of
        # a session that carries it, so upgrades get their own session.
        self._websocket_session = _client_session(trace_configs=[websocket.handshake_trace()])

    async def close(self) -> None:
        """Close the client session and every pooled upstream connection."""
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._websocket_session is not None:
            await self._websocket_session.close()
            self._websocket_session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("Forwarder.start() must be awaited before forwarding requests.")
        return self._session

    @property
    def websocket_session(self) -> aiohttp.ClientSession:
        if self._websocket_session is None:
            raise RuntimeError("Forwarder.start() must be awaited before forwarding requests.")
        return self._websocket_session

    async def forward(
        self,
        request: web.Request,
        *,
        route: Route,
        path: str,
        tenant: str | None,
        team: str | None,
        pool: str | None,
        on_headers: OnHeaders,
    ) -> web.StreamResponse:
        """Forward one request to the route's upstream and stream the response back.

        Args:
            request: the client request.
            route: the matched route.
            path: the normalised request path, sent upstream as it is.
            tenant: the tenant id for ``Gatekeeper-Tenant``, or None.
            team: the team id for ``Gatekeeper-Team``, or None.
            pool: the charged pool for ``Gatekeeper-Pool``, or None.
            on_headers: awaited with the upstream's status and headers before the client
                response starts; the headers it returns are added to that response.

        Returns:
            The client response, already sent.

        Raises:
            UpstreamFailure: no upstream response headers (connect error or timeout).
            BodyTooLarge: the streamed body passed the body limit before response headers.
            ConnectionResetError: the client disconnected while uploading its body.
            errors.BadRequest: a WebSocket upgrade with an invalid handshake.
        """
        upstream = self._upstreams[route.upstream]
        identity = {"Gatekeeper-Tenant": tenant, "Gatekeeper-Team": team, "Gatekeeper-Pool": pool}
        if websocket.is_upgrade(request):
            headers = upstream_request_headers(
                request, upstream=upstream, trusted=self._trusted, identity=identity,
                websocket=True,
            )
            return await self._forward_websocket(request, route, path, headers, on_headers)

        headers = upstream_request_headers(
            request, upstream=upstream, trusted=self._trusted, identity=identity
        )
        body = None
        if request.body_exists:
            body = RequestBody(request.content, body_limit(route, self._proxy))
        response, target = await self._send(request, route, path, headers, body)
        try:
            return await self._relay(request, route, target, response, on_headers)
        finally:
            # A fully read response has already returned its connection to the pool.
            # Otherwise this closes the connection and stops any body upload.
            response.close()

    async def _send(
        self,
        request: web.Request,
        route: Route,
        path: str,
        headers: CIMultiDict[str],
        body: RequestBody | None,
    ) -> tuple[aiohttp.ClientResponse, str]:
        """Send the request to the first target that accepts a connection."""
        upstream = self._upstreams[route.upstream]
        timeout = self._timeouts[route.upstream]

        async def attempt(url: URL) -> aiohttp.ClientResponse:
            return await self.session.request(
                request.method,
                url,
                headers=headers,
                data=body.chunks() if body is not None else None,
                timeout=timeout,
                allow_redirects=False,
            )

        return await self._first_reachable(
            request, route, path, attempt, body=body, timeout_s=upstream.read_timeout_s
        )

    async def _first_reachable(
        self,
        request: web.Request,
        route: Route,
        path: str,
        attempt: Callable[[URL], Awaitable[T]],
        *,
        body: RequestBody | None,
        timeout_s: float,
    ) -> tuple[T, str]:
        """Run ``attempt`` on each target in turn until one accepts the connection.

        NOTE: aiohttp itself resends an idempotent request (GET, HEAD, PUT, DELETE...) once
        to the same target when the connection closes before the response (RFC 9112 section
        9.3.1). That retry keeps a pooled connection the upstream closed from becoming a 502.
        """
        targets = self._targets[route.upstream]
        failure = UpstreamFailure("connect_error", f"Upstream {route.upstream!r} has no targets.")
        for target in targets.order():
            context = {"route": route.name, "upstream": route.upstream, "target": target}
            try:
                result = await attempt(URL(target + path + raw_query(request), encoded=True))
            except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
                # Nothing reached this target, so the next one may take the request.
                targets.mark_down(target)
                log.warning("upstream_connect_failed", error=describe_error(exc), **context)
                failure = UpstreamFailure(
                    "connect_error",
                    f"Upstream {route.upstream!r} refused or did not answer the connection.",
                )
                failure.__cause__ = exc
                continue
            except TimeoutError as exc:
                log.warning("upstream_timed_out", error=describe_error(exc), **context)
                raise UpstreamFailure(
                    "timeout",
                    f"Upstream {route.upstream!r} sent no response headers within {timeout_s} s.",
                ) from exc
            except aiohttp.WSServerHandshakeError:
                raise
            except aiohttp.ClientError as exc:
                raise self._send_failure(route, body, exc, context) from exc
            return result, target
        raise failure

    def _send_failure(
        self,
        route: Route,
        body: RequestBody | None,
        exc: aiohttp.ClientError,
        context: Mapping[str, str],
    ) -> Exception:
        """Return the error for a request that reached the upstream but got no headers."""
        if body is not None and body.too_large:
            log.info("request_body_too_large", limit=body_limit(route, self._proxy), **context)
            return BodyTooLarge(body_limit(route, self._proxy))
        if body is not None and body.client_failed:
            log.info("client_disconnected_uploading", sent=body.sent, **context)
            return ConnectionResetError("The client disconnected while sending its body.")
        log.warning("upstream_closed_before_headers", error=describe_error(exc), **context)
        return UpstreamFailure(
            "connect_error",
            f"Upstream {route.upstream!r} closed the connection before its response headers.",
        )

    async def _relay(
        self,
        request: web.Request,
        route: Route,
        target: str,
        upstream_response: aiohttp.ClientResponse,
        on_headers: OnHeaders,
    ) -> web.StreamResponse:
        """Stream the upstream response to the client, flushing each chunk as it arrives."""
        _stop_read_timeout(upstream_response)
        extra = await on_headers(upstream_response.status, upstream_response.headers)

        content = upstream_response.content
        # A body that arrived with the headers goes out in the same write as the client's
        # headers. Any other response sends its headers at once, before waiting for the body.
        response_class = _CoalescedResponse if content.is_eof() else web.StreamResponse
        response = response_class(
            status=upstream_response.status,
            reason=upstream_response.reason,
            headers=client_response_headers(
                upstream_response.headers,
                version=(upstream_response.version or aiohttp.HttpVersion11)[:2],
                extra=extra,
            ),
        )
        await response.prepare(request)

        context = {"route": route.name, "upstream": route.upstream, "target": target}
        while True:
            try:
                chunk = await content.readany()
            except (aiohttp.ClientError, TimeoutError) as exc:
                log.warning("upstream_body_failed", error=describe_error(exc), **context)
                # An empty write sends the headers a _CoalescedResponse still holds back.
                with contextlib.suppress(ConnectionResetError):
                    await response.write(b"")
                _close_client(request)
                return response
            if not chunk:
                break
            try:
                await response.write(chunk)
            except ConnectionResetError:
                log.info("client_disconnected", **context)
                return response

        await response.write_eof()
        return response

    async def _forward_websocket(
        self,
        request: web.Request,
        route: Route,
        path: str,
        headers: CIMultiDict[str],
        on_headers: OnHeaders,
    ) -> web.StreamResponse:
        """Open the upstream WebSocket, then accept the client's, then relay messages."""
        max_msg_size = max(body_limit(route, self._proxy), 1)
        readiness = web.WebSocketResponse(protocols=websocket.offered_protocols(request))
        if not readiness.can_prepare(request).ok:
            raise errors.BadRequest("The WebSocket upgrade request has an invalid handshake.")
        try:
            (upstream_ws, handshake), target = await self._connect_websocket(
                request, route, path, headers, max_msg_size
            )
        except aiohttp.WSServerHandshakeError as exc:
            return await self._refused_upgrade(exc, on_headers)

        try:
            extra = await on_headers(101, handshake)
            protocols = (upstream_ws.protocol,) if upstream_ws.protocol else ()
            client_ws = web.WebSocketResponse(protocols=protocols, max_msg_size=max_msg_size)
            client_ws.headers.update(extra)
            client_ws.headers.add("Via", f"1.1 {VIA_NAME}")
            await client_ws.prepare(request)
            log.info("websocket_open", route=route.name, target=target)
            await websocket.relay(client_ws, upstream_ws)
        finally:
            await upstream_ws.close()
        return client_ws

    async def _connect_websocket(
        self,
        request: web.Request,
        route: Route,
        path: str,
        headers: CIMultiDict[str],
        max_msg_size: int,
    ) -> tuple[websocket.Connected, str]:
        upstream = self._upstreams[route.upstream]
        # NOTE: the WebSocket client takes no per-request timeout, so one deadline covers
        # connect and handshake, and a target that never accepts counts as a timeout.
        deadline = upstream.connect_timeout_s + upstream.read_timeout_s

        async def attempt(url: URL) -> websocket.Connected:
            async with asyncio.timeout(deadline):
                return await websocket.connect(
                    self.websocket_session, url, headers=headers,
                    protocols=websocket.offered_protocols(request), max_msg_size=max_msg_size,
                )

        return await self._first_reachable(
            request, route, path, attempt, body=None, timeout_s=deadline
        )

    async def _refused_upgrade(
        self, exc: aiohttp.WSServerHandshakeError, on_headers: OnHeaders
    ) -> web.StreamResponse:
        """Pass on an upstream's refusal to upgrade: its status and headers, without a body."""
        upstream_headers = CIMultiDictProxy(CIMultiDict(exc.headers or {}))
        extra = await on_headers(exc.status, upstream_headers)
        headers = client_response_headers(upstream_headers, version=(1, 1), extra=extra)
        for name in ("Content-Length", "Content-Encoding"):
            headers.popall(name, None)
        return web.Response(status=exc.status, headers=headers)


class _CoalescedResponse(web.StreamResponse):
    """A streamed response whose headers wait for the first body write or the end.

    It saves one write system call per response, about 14 µs of py-spy self time in
    ``StreamWriter._write``, so it is used only when the upstream's whole body is here.
    NOTE: ``_send_headers_immediately`` is private to aiohttp (3.14 ``web.Response`` sets
    it the same way). Without it the headers are sent at ``prepare``, as before.
    """

    _send_headers_immediately = False


def _client_session(
    trace_configs: list[aiohttp.TraceConfig] | None = None,
) -> aiohttp.ClientSession:
    # NOTE: limit=0 lifts aiohttp's default cap of 100 connections, which would queue
    # requests inside the gateway. The number of open client requests bounds the count.
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0),
        auto_decompress=False,
        cookie_jar=aiohttp.DummyCookieJar(),
        skip_auto_headers=SKIP_AUTO_HEADERS,
        timeout=aiohttp.ClientTimeout(total=None),
        trace_configs=trace_configs,
    )


def _client_timeout(upstream: Upstream) -> aiohttp.ClientTimeout:
    return aiohttp.ClientTimeout(
        total=None,
        connect=upstream.connect_timeout_s,
        sock_connect=upstream.connect_timeout_s,
        # aiohttp starts this clock once the request body is sent; _relay stops it when the
        # response headers arrive, so a quiet stream is never cut.
        sock_read=upstream.read_timeout_s,
    )


def _stop_read_timeout(response: aiohttp.ClientResponse) -> None:
    """Stop the read timeout once headers arrived; it covers only the wait for them."""
    connection = response.connection
    if connection is not None and connection.protocol is not None:
        connection.protocol.read_timeout = None
        connection.protocol.start_timeout()


def _close_client(request: web.Request) -> None:
    """End a started client response early, so the client sees it as incomplete."""
    if request.transport is not None:
        request.transport.close()

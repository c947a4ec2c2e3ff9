"""Header rules of the forwarding hop: what crosses to the upstream and back, and what is added.

Hop-by-hop headers (RFC 9110 section 7.6.1) never cross in either direction: the fixed set
below, every ``Proxy-*`` header and every header a ``Connection`` header names. Repeated
headers stay separate lines, because values such as ``Set-Cookie`` cannot be joined with
commas. The forwarding headers (``X-Forwarded-*``, ``Via``) and the identity headers
(``Gatekeeper-*``) are always written by this hop, so a client cannot forge them.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable, Mapping

from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from gatekeeper.config.model import Upstream

HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "te", "trailer", "transfer-encoding", "upgrade"}
)
# The gateway replies to "Expect: 100-continue" itself, so the upstream never receives it.
ANSWERED_HERE = frozenset({"expect"})
# The WebSocket client generates its own handshake headers for the upstream connection.
WEBSOCKET_HANDSHAKE = frozenset(
    {
        "sec-websocket-key",
        "sec-websocket-version",
        "sec-websocket-extensions",
        "sec-websocket-protocol",
        "sec-websocket-accept",
    }
)
FORWARDING = frozenset({"host", "x-forwarded-for", "x-forwarded-host", "x-forwarded-proto"})
IDENTITY = ("Gatekeeper-Tenant", "Gatekeeper-Team", "Gatekeeper-Pool")
VIA_NAME = "gatekeeper"

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class TrustedProxies:
    """The networks whose ``X-Forwarded-*`` and ``Forwarded`` headers are kept.

    Args:
        cidrs: CIDR strings from ``proxy.trusted_proxies``. Host bits are ignored.
    """

    def __init__(self, cidrs: Iterable[str]) -> None:
        self._networks: tuple[Network, ...] = tuple(
            ipaddress.ip_network(cidr, strict=False) for cidr in cidrs
        )

    def __contains__(self, peer: object) -> bool:
        if not isinstance(peer, str) or not self._networks:
            return False
        try:
            address = ipaddress.ip_address(peer)
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in network for network in self._networks)


def hop_by_hop(headers: CIMultiDictProxy[str] | CIMultiDict[str]) -> frozenset[str]:
    """Return the lowercase names that must not cross this hop, including those named by
    ``Connection``."""
    if "Connection" not in headers:
        return HOP_BY_HOP
    named = {
        token.strip().lower()
        for value in headers.getall("Connection", ())
        for token in value.split(",")
        if token.strip()
    }
    return HOP_BY_HOP | named


def _crosses(name: str, dropped: frozenset[str]) -> bool:
    lower = name.lower()
    return lower not in dropped and not lower.startswith("proxy-")


def upstream_request_headers(
    request: web.Request,
    *,
    upstream: Upstream,
    trusted: TrustedProxies,
    identity: Mapping[str, str | None],
    websocket: bool = False,
) -> CIMultiDict[str]:
    """Build the headers sent upstream for one client request.

    Args:
        request: the client request.
        upstream: the upstream's settings (``preserve_host``, ``strip_authorization``).
        trusted: peers whose forwarding headers are kept and extended.
        identity: ``Gatekeeper-Tenant``/``-Team``/``-Pool`` values; None leaves one out.
        websocket: drop the client's WebSocket handshake headers, which the upstream
            connection replaces with its own.

    Returns:
        The upstream request headers, repeated headers kept as separate entries.
    """
    incoming = request.headers
    peer = request.remote
    peer_trusted = peer in trusted
    dropped = _never_forwarded(upstream.strip_authorization, websocket, peer_trusted)
    if "Connection" in incoming:
        dropped |= hop_by_hop(incoming)

    headers: CIMultiDict[str] = CIMultiDict(
        (name, value) for name, value in incoming.items() if _crosses(name, dropped)
    )
    client_host = incoming.get("Host")
    if upstream.preserve_host and client_host:
        headers["Host"] = client_host
    _add_forwarding(headers, request, peer=peer, peer_trusted=peer_trusted)
    headers.add("Via", f"{request.version.major}.{request.version.minor} {VIA_NAME}")
    for name in IDENTITY:
        value = identity.get(name)
        if value is not None:
            headers[name] = value
    return headers


@functools.cache
def _never_forwarded(strip_authorization: bool, websocket: bool, peer_trusted: bool
                     ) -> frozenset[str]:
    """Return the lowercase names dropped from every request of this kind, before the names
    a ``Connection`` header adds. Cached, so a request builds no sets of its own."""
    dropped = HOP_BY_HOP | ANSWERED_HERE | FORWARDING | {name.lower() for name in IDENTITY}
    if websocket:
        dropped |= WEBSOCKET_HANDSHAKE
    if strip_authorization:
        dropped |= {"authorization"}
    if not peer_trusted:
        dropped |= {"forwarded"}
    return dropped


def _add_forwarding(
    headers: CIMultiDict[str], request: web.Request, *, peer: str | None, peer_trusted: bool
) -> None:
    """Write exactly one each of ``X-Forwarded-For``, ``-Host`` and ``-Proto``."""
    incoming = request.headers
    hop = peer or "unknown"
    sent_for = ", ".join(incoming.getall("X-Forwarded-For", ()))
    if peer_trusted and sent_for:
        headers["X-Forwarded-For"] = f"{sent_for}, {hop}"
    else:
        headers["X-Forwarded-For"] = hop

    sent_host = incoming.get("X-Forwarded-Host") if peer_trusted else None
    forwarded_host = sent_host or incoming.get("Host")
    if forwarded_host:
        headers["X-Forwarded-Host"] = forwarded_host

    sent_proto = incoming.get("X-Forwarded-Proto") if peer_trusted else None
    headers["X-Forwarded-Proto"] = sent_proto or request.scheme


def client_response_headers(
    upstream_headers: CIMultiDictProxy[str],
    *,
    version: tuple[int, int],
    extra: Mapping[str, str],
) -> CIMultiDict[str]:
    """Build the headers sent to the client for an upstream response.

    Args:
        upstream_headers: the upstream's response headers.
        version: the upstream response's HTTP version, for ``Via``.
        extra: headers the gateway adds (``Ticket-Cost``, ``Ticket-Balance``). Each one
            replaces any upstream header of the same name.

    Returns:
        The client response headers, repeated headers kept as separate entries.
    """
    dropped = hop_by_hop(upstream_headers)
    headers: CIMultiDict[str] = CIMultiDict(
        (name, value) for name, value in upstream_headers.items() if _crosses(name, dropped)
    )
    for name, value in extra.items():
        headers[name] = value
    headers.add("Via", f"{version[0]}.{version[1]} {VIA_NAME}")
    return headers

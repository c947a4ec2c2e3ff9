"""Header rules of the forwarder, checked on real upstream servers and raw client sockets."""

from __future__ import annotations

import asyncio

import aiohttp
from multidict import CIMultiDict

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

GET_API_HOST = b"GET / HTTP/1.1\r\nHost: api.example\r\nConnection: close\r\n\r\n"


async def test_hop_by_hop_request_dropped(aiohttp_server: ServerFactory) -> None:
    """Hop-by-hop headers and the headers Connection names never reach the upstream."""
    url, seen = await recording_upstream(aiohttp_server)
    gateway = await start_gateway(aiohttp_server, upstreams={"up": url})
    request = (
        b"GET /x HTTP/1.1\r\nHost: client.example\r\n"
        b"Connection: close, X-Hop-Secret\r\nX-Hop-Secret: 1\r\nKeep-Alive: timeout=5\r\n"
        b"TE: trailers\r\nTrailer: X-Checksum\r\nUpgrade: h2c\r\n"
        b"Proxy-Authorization: Basic cDp3\r\nProxy-Connection: keep-alive\r\n"
        b"X-Kept: 1\r\n\r\n"
    )
    status, _, _ = parse_response(await exchange(gateway.port, request))
    assert status == 200
    received = seen[0].headers
    for name in ("X-Hop-Secret", "Keep-Alive", "TE", "Trailer", "Upgrade",
                 "Proxy-Authorization", "Proxy-Connection"):
        assert name not in received, name
    assert "x-hop-secret" not in received.get("Connection", "").lower()
    assert received.getall("X-Kept") == ["1"]


async def test_hop_by_hop_response_dropped(aiohttp_server: ServerFactory) -> None:
    """Hop-by-hop response headers never reach the client."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: X-Up-Hop\r\n"
            b"X-Up-Hop: 1\r\nKeep-Alive: timeout=5\r\nProxy-Authenticate: Basic\r\n"
            b"Trailer: X-Sum\r\nUpgrade: foo\r\nX-Kept: 1\r\n\r\nok"
        )
        await writer.drain()

    async with raw_upstream(answer) as url:
        gateway = await start_gateway(aiohttp_server, upstreams={"up": url})
        raw = await exchange(gateway.port, GET)
    status, headers, body = parse_response(raw)
    assert status == 200
    assert body == b"ok"
    names = {name.lower() for name, _ in headers}
    for name in ("x-up-hop", "keep-alive", "proxy-authenticate", "trailer", "upgrade"):
        assert name not in names, name
    assert header_values(headers, "Connection") in ([], ["close"])
    assert header_values(headers, "X-Kept") == ["1"]


async def test_set_cookie_lines_kept(aiohttp_server: ServerFactory) -> None:
    """Repeated headers stay separate lines both ways, even with commas inside."""
    cookies = CIMultiDict(
        [
            ("Set-Cookie", "a=1; Expires=Wed, 21 Oct 2026 07:28:00 GMT; Path=/"),
            ("Set-Cookie", "b=2; HttpOnly"),
        ]
    )
    url, seen = await recording_upstream(aiohttp_server, headers=cookies)
    gateway = await start_gateway(aiohttp_server, upstreams={"up": url})
    request = (
        b"GET / HTTP/1.1\r\nHost: c\r\nConnection: close\r\n"
        b"X-Multi: one, two\r\nX-Multi: three\r\n\r\n"
    )
    status, headers, _ = parse_response(await exchange(gateway.port, request))
    assert status == 200
    assert header_values(headers, "Set-Cookie") == [
        "a=1; Expires=Wed, 21 Oct 2026 07:28:00 GMT; Path=/",
        "b=2; HttpOnly",
    ]
    assert seen[0].headers.getall("X-Multi") == ["one, two", "three"]


async def test_upstream_cookies_not_stored(aiohttp_server: ServerFactory) -> None:
    """A cookie one client receives is never sent upstream on another client's request.

    The upstream is named ``localhost`` because cookie jars ignore cookies from IP addresses.
    """
    cookies = CIMultiDict([("Set-Cookie", "session=alice; Path=/")])
    url, seen = await recording_upstream(aiohttp_server, headers=cookies)
    named_url = url.replace("127.0.0.1", "localhost")
    gateway = await start_gateway(aiohttp_server, upstreams={"up": named_url})
    for _ in range(2):
        await exchange(gateway.port, GET)
    assert "Cookie" not in seen[1].headers


async def test_host_is_upstreams_own(aiohttp_server: ServerFactory) -> None:
    url, seen = await recording_upstream(aiohttp_server)
    gateway = await start_gateway(aiohttp_server, upstreams={"up": url})
    await exchange(gateway.port, GET_API_HOST)
    assert seen[0].headers["Host"] == url.removeprefix("http://")
    assert seen[0].headers.getall("X-Forwarded-Host") == ["api.example"]


async def test_preserve_host(aiohttp_server: ServerFactory) -> None:
    url, seen = await recording_upstream(aiohttp_server)
    upstream = {"url": url, "preserve_host": True}
    gateway = await start_gateway(aiohttp_server, upstreams={"up": upstream})
    await exchange(gateway.port, GET_API_HOST)
    assert seen[0].headers.getall("Host") == ["api.example"]


SPOOFED = (
    b"GET / HTTP/1.1\r\nHost: c\r\nConnection: close\r\n"
    b"X-Forwarded-For: 1.2.3.4\r\nX-Forwarded-For: 5.6.7.8\r\n"
    b"X-Forwarded-Host: evil.example\r\nX-Forwarded-Proto: https\r\n"
    b"Forwarded: for=9.9.9.9\r\n\r\n"
)


async def test_xff_untrusted_replaced(aiohttp_server: ServerFactory) -> None:
    """From an untrusted peer, forwarding headers are replaced by what this hop saw."""
    url, seen = await recording_upstream(aiohttp_server)
    gateway = await start_gateway(
        aiohttp_server, upstreams={"up": url}, proxy={"trusted_proxies": ["10.0.0.0/8"]}
    )
    await exchange(gateway.port, SPOOFED)
    received = seen[0].headers
    assert received.getall("X-Forwarded-For") == ["127.0.0.1"]
    assert received.getall("X-Forwarded-Host") == ["c"]
    assert received.getall("X-Forwarded-Proto") == ["http"]
    assert "Forwarded" not in received


async def test_xff_trusted_appended(aiohttp_server: ServerFactory) -> None:
    """From a trusted peer, the client's chain is kept in one header with the peer appended."""
    url, seen = await recording_upstream(aiohttp_server)
    gateway = await start_gateway(
        aiohttp_server, upstreams={"up": url}, proxy={"trusted_proxies": ["127.0.0.0/8"]}
    )
    await exchange(gateway.port, SPOOFED)
    received = seen[0].headers
    assert received.getall("X-Forwarded-For") == ["1.2.3.4, 5.6.7.8, 127.0.0.1"]
    assert received.getall("X-Forwarded-Host") == ["evil.example"]
    assert received.getall("X-Forwarded-Proto") == ["https"]
    assert received.getall("Forwarded") == ["for=9.9.9.9"]


async def test_via_added_both_ways(aiohttp_server: ServerFactory) -> None:
    url, seen = await recording_upstream(aiohttp_server)
    gateway = await start_gateway(aiohttp_server, upstreams={"up": url})
    request = b"GET / HTTP/1.1\r\nHost: c\r\nConnection: close\r\nVia: 1.0 edge\r\n\r\n"
    _, headers, _ = parse_response(await exchange(gateway.port, request))
    assert seen[0].headers.getall("Via") == ["1.0 edge", "1.1 gatekeeper"]
    assert header_values(headers, "Via") == ["1.1 gatekeeper"]


async def test_identity_spoofing_removed(aiohttp_server: ServerFactory) -> None:
    """Client copies of Gatekeeper-* are removed; only the gateway's values arrive."""
    url, seen = await recording_upstream(aiohttp_server)
    gateway = await start_gateway(
        aiohttp_server, upstreams={"up": url}, identity=("acme", None, "acme/gpu")
    )
    request = (
        b"GET / HTTP/1.1\r\nHost: c\r\nConnection: close\r\n"
        b"Gatekeeper-Tenant: evil\r\ngatekeeper-team: evil\r\nGATEKEEPER-POOL: evil\r\n\r\n"
    )
    await exchange(gateway.port, request)
    received = seen[0].headers
    assert received.getall("Gatekeeper-Tenant") == ["acme"]
    assert "Gatekeeper-Team" not in received
    assert received.getall("Gatekeeper-Pool") == ["acme/gpu"]


async def test_identity_team_set(aiohttp_server: ServerFactory) -> None:
    url, seen = await recording_upstream(aiohttp_server)
    gateway = await start_gateway(
        aiohttp_server, upstreams={"up": url}, identity=("acme", "ml", "acme/ml")
    )
    await exchange(gateway.port, GET)
    assert seen[0].headers.getall("Gatekeeper-Team") == ["ml"]


async def test_authorization_forwarded(aiohttp_server: ServerFactory) -> None:
    url, seen = await recording_upstream(aiohttp_server)
    gateway = await start_gateway(aiohttp_server, upstreams={"up": url})
    async with aiohttp.ClientSession() as client:
        await client.get(gateway.url("/"), headers={"Authorization": "Bearer t0k"})
    assert seen[0].headers.getall("Authorization") == ["Bearer t0k"]


async def test_authorization_stripped(aiohttp_server: ServerFactory) -> None:
    url, seen = await recording_upstream(aiohttp_server)
    upstream = {"url": url, "strip_authorization": True}
    gateway = await start_gateway(aiohttp_server, upstreams={"up": upstream})
    async with aiohttp.ClientSession() as client:
        await client.get(gateway.url("/"), headers={"Authorization": "Bearer t0k"})
    assert "Authorization" not in seen[0].headers


async def test_no_headers_invented(aiohttp_server: ServerFactory) -> None:
    """The client library adds no User-Agent, Accept or Accept-Encoding of its own."""
    url, seen = await recording_upstream(aiohttp_server)
    gateway = await start_gateway(aiohttp_server, upstreams={"up": url})
    await exchange(gateway.port, b"POST / HTTP/1.1\r\nHost: c\r\nConnection: close\r\n"
                   b"Content-Length: 2\r\n\r\nhi")
    for name in ("User-Agent", "Accept", "Accept-Encoding", "Content-Type"):
        assert name not in seen[0].headers, name


async def test_extra_headers_on_response(aiohttp_server: ServerFactory) -> None:
    """on_headers runs once with the upstream's status, and its headers reach the client."""
    url, _ = await recording_upstream(aiohttp_server, status=201)
    gateway = await start_gateway(aiohttp_server, upstreams={"up": url})
    raw = await exchange(gateway.port, GET)
    status, headers, _ = parse_response(raw)
    assert status == 201
    assert [call[0] for call in gateway.headers_calls] == [201]
    assert header_values(headers, "Ticket-Cost") == ["1"]
    assert header_values(headers, "Ticket-Balance") == ["99"]


async def test_upstream_5xx_passed_through(aiohttp_server: ServerFactory) -> None:
    url, _ = await recording_upstream(aiohttp_server, status=503, body=b"busy")
    gateway = await start_gateway(aiohttp_server, upstreams={"up": url})
    raw = await exchange(gateway.port, GET)
    status, _, body = parse_response(raw)
    assert status == 503
    assert body == b"busy"
    assert gateway.failures == []
    assert [call[0] for call in gateway.headers_calls] == [503]

"""Request targets and framing through the test gateway, sent as raw bytes.

A client library would normalise paths, re-encode queries or fix framing before sending,
so these tests write the request line and headers byte by byte.
"""

from __future__ import annotations

import pytest
from aiohttp import HttpVersion
from aiohttp.test_utils import make_mocked_request
from multidict import CIMultiDict

from gatekeeper import errors
from gatekeeper.proxy import check_request_framing
from tests.integration.test_proxy_harness import (
    ServerFactory,
    exchange,
    parse_response,
    recording_upstream,
    start_gateway,
)


def request_line(target: bytes) -> bytes:
    return b"GET " + target + b" HTTP/1.1\r\nHost: c\r\nConnection: close\r\n\r\n"


async def test_query_byte_identical(aiohttp_server: ServerFactory) -> None:
    url, seen = await recording_upstream(aiohttp_server)
    gateway = await start_gateway(aiohttp_server, upstreams={"up": url})
    target = b"/q?a=1&a=2&b&c=d+e&p=%2F&e=%e2%82%AC&s=a%20b&&"
    status, _, _ = parse_response(await exchange(gateway.port, request_line(target)))
    assert status == 200
    assert seen[0].raw_path == target.decode()


async def test_upstream_base_path_kept(aiohttp_server: ServerFactory) -> None:
    url, seen = await recording_upstream(aiohttp_server)
    gateway = await start_gateway(aiohttp_server, upstreams={"up": url + "/base/"})
    await exchange(gateway.port, request_line(b"/v1/x?y=1"))
    assert seen[0].raw_path == "/base/v1/x?y=1"


FORWARDED_PATHS = [
    (b"/v1/./x/../y", "/v1/y"),
    (b"/v1//y///z", "/v1/y/z"),
    (b"/v1/%41%7e", "/v1/A~"),
    (b"/v1/a%2Fb", "/v1/a%2Fb"),
    (b"/v1/a%2fb/%2e%2e/c", "/v1/c"),
    (b"/v1/%2E%2E/v1/x", "/v1/x"),
]


@pytest.mark.parametrize(("target", "forwarded"), FORWARDED_PATHS)
async def test_path_normalised_upstream(
    aiohttp_server: ServerFactory, target: bytes, forwarded: str
) -> None:
    """The upstream receives the normalised path, which is the path that was matched."""
    url, seen = await recording_upstream(aiohttp_server)
    gateway = await start_gateway(aiohttp_server, upstreams={"up": url})
    status, _, _ = parse_response(await exchange(gateway.port, request_line(target)))
    assert status == 200
    assert seen[0].raw_path == forwarded


async def test_encoded_dots_cannot_escape_route(aiohttp_server: ServerFactory) -> None:
    """``%2e%2e`` resolves before matching, so it cannot reach a path outside the prefix."""
    public_url, public_seen = await recording_upstream(aiohttp_server)
    admin_url, admin_seen = await recording_upstream(aiohttp_server)
    routes = [
        {"name": "public", "match": {"path_prefix": "/public"}, "upstream": "public"},
        {"name": "admin", "match": {"path_prefix": "/admin"}, "upstream": "admin"},
    ]
    gateway = await start_gateway(
        aiohttp_server, upstreams={"public": public_url, "admin": admin_url}, routes=routes
    )
    await exchange(gateway.port, request_line(b"/public/%2e%2e/admin/users"))
    assert public_seen == []
    assert [seen.raw_path for seen in admin_seen] == ["/admin/users"]


@pytest.mark.parametrize("target", [b"/..", b"/a/../../b", b"/%2e%2e/x", b"/a/%2E./..", b"/a/%zz"])
async def test_bad_path_rejected(aiohttp_server: ServerFactory, target: bytes) -> None:
    url, seen = await recording_upstream(aiohttp_server)
    gateway = await start_gateway(aiohttp_server, upstreams={"up": url})
    status, _, _ = parse_response(await exchange(gateway.port, request_line(target)))
    assert status == 400
    assert seen == []


AMBIGUOUS_FRAMING = {
    "cl-then-te": b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
    "te-then-cl": b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n",
    "duplicate-cl": b"Content-Length: 5\r\nContent-Length: 5\r\n",
    "conflicting-cl": b"Content-Length: 5\r\nContent-Length: 6\r\n",
    "listed-cl": b"Content-Length: 5, 5\r\n",
    "coded-chunked": b"Transfer-Encoding: gzip, chunked\r\n",
    "duplicate-te": b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
}


@pytest.mark.parametrize("framing", AMBIGUOUS_FRAMING.values(), ids=AMBIGUOUS_FRAMING.keys())
async def test_ambiguous_framing_rejected(aiohttp_server: ServerFactory, framing: bytes) -> None:
    """Requests whose body length two parsers could read differently get 400 and go nowhere."""
    url, seen = await recording_upstream(aiohttp_server)
    gateway = await start_gateway(aiohttp_server, upstreams={"up": url})
    request = (
        b"POST / HTTP/1.1\r\nHost: c\r\nConnection: close\r\n" + framing
        + b"\r\n5\r\nhello\r\n0\r\n\r\n"
    )
    status, _, _ = parse_response(await exchange(gateway.port, request))
    assert status == 400
    assert seen == []


async def test_http10_chunked_rejected(aiohttp_server: ServerFactory) -> None:
    url, seen = await recording_upstream(aiohttp_server)
    gateway = await start_gateway(aiohttp_server, upstreams={"up": url})
    request = (
        b"POST / HTTP/1.0\r\nHost: c\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n0\r\n\r\n"
    )
    status, _, _ = parse_response(await exchange(gateway.port, request))
    assert status == 400
    assert seen == []


FRAMING_CHECKS = {
    "cl-and-te": ([("Content-Length", "5"), ("Transfer-Encoding", "chunked")], (1, 1)),
    "two-cl": ([("Content-Length", "5"), ("Content-Length", "5")], (1, 1)),
    "listed-cl": ([("Content-Length", "5, 5")], (1, 1)),
    "signed-cl": ([("Content-Length", "+5")], (1, 1)),
    "coded-te": ([("Transfer-Encoding", "gzip, chunked")], (1, 1)),
    "two-te": ([("Transfer-Encoding", "chunked"), ("Transfer-Encoding", "chunked")], (1, 1)),
    "te-in-http10": ([("Transfer-Encoding", "chunked")], (1, 0)),
}


@pytest.mark.parametrize(
    ("headers", "version"), FRAMING_CHECKS.values(), ids=FRAMING_CHECKS.keys()
)
def test_framing_check_raises(headers: list[tuple[str, str]], version: tuple[int, int]) -> None:
    """The check catches each case itself, whatever the HTTP parser in front of it lets by."""
    request = make_mocked_request(
        "POST", "/", headers=CIMultiDict(headers), version=HttpVersion(*version)
    )
    with pytest.raises(errors.BadRequest):
        check_request_framing(request)


@pytest.mark.parametrize(
    "headers",
    [[], [("Content-Length", "5")], [("Transfer-Encoding", "Chunked")]],
)
def test_framing_check_accepts(headers: list[tuple[str, str]]) -> None:
    request = make_mocked_request("POST", "/", headers=CIMultiDict(headers))
    check_request_framing(request)

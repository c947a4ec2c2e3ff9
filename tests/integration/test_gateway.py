"""The main job end to end: a JWT tenant is charged per route in Redis and gets 402 when empty.

Each test runs the real gateway in this event loop against the session's Redis and a real
aiohttp upstream, and talks to both through an HTTP client.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import pytest
import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.test_utils import TestServer

from gatekeeper.embedded import free_port
from tests.support import ADMIN_HEADERS, bearer, config_text, running_gateway, upstream_server

ROUTES = """
- name: echo
  match: {path: /v1/echo, methods: [GET]}
  upstream: api
  cost: 1
- name: reports
  match: {path_prefix: /v1/reports}
  upstream: api
  cost: 3
- name: fail
  match: {path: /v1/fail}
  upstream: api
  cost: 2
- name: fail-kept
  match: {path: /v1/fail-kept}
  upstream: api
  cost: 2
  refund_on: [connect_error, timeout]
- name: public
  match: {path: /public}
  upstream: api
  auth: none
  cost: 0
"""


class Upstream:
    """A real aiohttp upstream that records what reached it."""

    def __init__(self) -> None:
        self.hits: list[web.Request] = []
        self.headers: list[dict[str, str]] = []

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.hits.append(request)
        self.headers.append(dict(request.headers))
        if request.path.startswith("/v1/fail"):
            return web.json_response({"error": "boom"}, status=503)
        return web.json_response({"path": request.path, "query": request.query_string})


@pytest.fixture
async def upstream() -> AsyncIterator[tuple[Upstream, str]]:
    recorder = Upstream()
    async with upstream_server(recorder.handle) as url:
        yield recorder, url


async def test_charge_until_402(redis_url: str, upstream: tuple[Upstream, str],
                                session: aiohttp.ClientSession) -> None:
    recorder, url = upstream
    text = config_text(redis_url=redis_url, upstream_url=url, routes=ROUTES)
    async with running_gateway(text) as gateway:
        await gateway.grant(session, "acme", 2)
        statuses, balances = [], []
        for _ in range(3):
            async with session.get(f"{gateway.proxy_url}/v1/echo", headers=bearer("acme")) as resp:
                statuses.append(resp.status)
                balances.append(resp.headers.get("Ticket-Balance"))
                body = await resp.json(content_type=None)
        assert statuses == [200, 200, 402]
        assert balances == ["1", "0", "0"]
        assert body["pool"] == "acme"
        assert body["cost"] == 1
        assert body["balance"] == 0
        assert len(recorder.hits) == 2


async def test_402_is_problem_json(redis_url: str, upstream: tuple[Upstream, str],
                                   session: aiohttp.ClientSession) -> None:
    recorder, url = upstream
    text = config_text(redis_url=redis_url, upstream_url=url, routes=ROUTES)
    async with running_gateway(text) as gateway:
        await gateway.grant(session, "acme", 2)
        async with session.post(f"{gateway.proxy_url}/v1/reports",
                                headers=bearer("acme")) as resp:
            body = await resp.json(content_type=None)
            assert resp.status == 402
            assert resp.content_type == "application/problem+json"
            assert resp.headers["Ticket-Cost"] == "3"
            assert resp.headers["Ticket-Balance"] == "2"
        assert body["type"].endswith("insufficient-tickets")
        assert body["status"] == 402
        assert not recorder.hits


async def test_unknown_tenant_gets_402(redis_url: str, upstream: tuple[Upstream, str],
                                       session: aiohttp.ClientSession) -> None:
    _, url = upstream
    text = config_text(redis_url=redis_url, upstream_url=url, routes=ROUTES)
    async with running_gateway(text) as gateway:
        async with session.get(f"{gateway.proxy_url}/v1/echo", headers=bearer("nobody")) as resp:
            body = await resp.json(content_type=None)
        assert resp.status == 402
        assert body["pool"] == "nobody"


async def test_team_pool_charged_when_present(redis_url: str, upstream: tuple[Upstream, str],
                                              session: aiohttp.ClientSession) -> None:
    recorder, url = upstream
    text = config_text(redis_url=redis_url, upstream_url=url, routes=ROUTES)
    async with running_gateway(text) as gateway:
        await gateway.grant(session, "acme", 10)
        await gateway.grant(session, "acme/ml", 5)
        async with session.get(f"{gateway.proxy_url}/v1/echo",
                               headers=bearer("acme", team="ml")) as resp:
            assert resp.headers["Ticket-Balance"] == "4"
        async with session.get(f"{gateway.proxy_url}/v1/echo",
                               headers=bearer("acme", team="web")) as resp:
            assert resp.headers["Ticket-Balance"] == "9"
        assert recorder.headers[0]["Gatekeeper-Pool"] == "acme/ml"
        assert recorder.headers[1]["Gatekeeper-Pool"] == "acme"


async def test_missing_token_401(redis_url: str, upstream: tuple[Upstream, str],
                                 session: aiohttp.ClientSession) -> None:
    recorder, url = upstream
    text = config_text(redis_url=redis_url, upstream_url=url, routes=ROUTES)
    async with running_gateway(text) as gateway:
        async with session.get(f"{gateway.proxy_url}/v1/echo") as resp:
            assert resp.status == 401
            assert resp.headers["WWW-Authenticate"] == 'Bearer realm="gatekeeper"'
        async with session.get(f"{gateway.proxy_url}/v1/echo",
                               headers={"Authorization": "Bearer not.a.jwt"}) as resp:
            assert resp.status == 401
            assert 'error="invalid_token"' in resp.headers["WWW-Authenticate"]
        assert not recorder.hits


async def test_no_route_404(redis_url: str, upstream: tuple[Upstream, str],
                            session: aiohttp.ClientSession) -> None:
    _, url = upstream
    text = config_text(redis_url=redis_url, upstream_url=url, routes=ROUTES)
    async with running_gateway(text) as gateway:
        async with session.get(f"{gateway.proxy_url}/nowhere", headers=bearer("acme")) as resp:
            body = await resp.json(content_type=None)
        assert resp.status == 404
        assert resp.content_type == "application/problem+json"
        assert body["status"] == 404


async def test_public_route_skips_jwt(redis_url: str, upstream: tuple[Upstream, str],
                                      session: aiohttp.ClientSession) -> None:
    recorder, url = upstream
    text = config_text(redis_url=redis_url, upstream_url=url, routes=ROUTES)
    async with running_gateway(text) as gateway:
        async with session.get(f"{gateway.proxy_url}/public") as resp:
            assert resp.status == 200
            assert "Ticket-Cost" not in resp.headers
        assert len(recorder.hits) == 1


async def test_5xx_refunded_once(redis_url: str, upstream: tuple[Upstream, str],
                                 session: aiohttp.ClientSession) -> None:
    _, url = upstream
    text = config_text(redis_url=redis_url, upstream_url=url, routes=ROUTES)
    async with running_gateway(text) as gateway:
        await gateway.grant(session, "acme", 5)
        async with session.get(f"{gateway.proxy_url}/v1/fail", headers=bearer("acme")) as resp:
            assert resp.status == 503
            assert resp.headers["Ticket-Balance"] == "5"
        async with session.get(f"{gateway.proxy_url}/v1/fail-kept",
                               headers=bearer("acme")) as resp:
            assert resp.status == 503
            assert resp.headers["Ticket-Balance"] == "3"
        pool = await gateway.ledger.get_pool("acme")
        assert pool is not None
        assert pool["balance"] == 3


async def test_connection_refused_502_refunded(redis_url: str,
                                               session: aiohttp.ClientSession) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    text = config_text(redis_url=redis_url, upstream_url=dead, routes=ROUTES,
                       upstream_extra="connect_timeout_s: 1")
    async with running_gateway(text) as gateway:
        await gateway.grant(session, "acme", 5)
        async with session.get(f"{gateway.proxy_url}/v1/echo", headers=bearer("acme")) as resp:
            body = await resp.json(content_type=None)
            assert resp.status == 502
            assert resp.headers["Ticket-Balance"] == "5"
        assert body["status"] == 502


async def test_timeout_504_refunded(redis_url: str, session: aiohttp.ClientSession) -> None:
    released = asyncio.Event()

    async def stall(request: web.Request) -> web.Response:
        await released.wait()
        return web.Response(text="late")

    app = web.Application()
    app.router.add_get("/v1/echo", stall)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    text = config_text(redis_url=redis_url, upstream_url=str(server.make_url("")).rstrip("/"),
                       routes=ROUTES, upstream_extra="read_timeout_s: 0.2")
    try:
        async with running_gateway(text) as gateway:
            await gateway.grant(session, "acme", 5)
            async with session.get(f"{gateway.proxy_url}/v1/echo",
                                   headers=bearer("acme")) as resp:
                assert resp.status == 504
                assert resp.headers["Ticket-Balance"] == "5"
    finally:
        released.set()
        await server.close()


async def test_charge_uses_evalsha(redis_url: str, upstream: tuple[Upstream, str],
                                   session: aiohttp.ClientSession) -> None:
    _, url = upstream
    text = config_text(redis_url=redis_url, upstream_url=url, routes=ROUTES)
    client = aioredis.from_url(redis_url)
    try:
        await client.config_resetstat()
        async with running_gateway(text) as gateway:
            await gateway.grant(session, "acme", 5)
            for _ in range(3):
                async with session.get(f"{gateway.proxy_url}/v1/echo",
                                       headers=bearer("acme")) as resp:
                    assert resp.status == 200
        stats = await client.info("commandstats")
    finally:
        await client.aclose()
    assert stats["cmdstat_evalsha"]["calls"] >= 3
    assert "cmdstat_eval" not in stats


async def test_script_flush_between_requests(redis_url: str, upstream: tuple[Upstream, str],
                                             session: aiohttp.ClientSession) -> None:
    _, url = upstream
    text = config_text(redis_url=redis_url, upstream_url=url, routes=ROUTES)
    client = aioredis.from_url(redis_url)
    try:
        async with running_gateway(text) as gateway:
            await gateway.grant(session, "acme", 5)
            async with session.get(f"{gateway.proxy_url}/v1/echo", headers=bearer("acme")) as r:
                assert r.status == 200
            await client.script_flush()
            async with session.get(f"{gateway.proxy_url}/v1/echo", headers=bearer("acme")) as r:
                assert r.status == 200
                assert r.headers["Ticket-Balance"] == "3"
    finally:
        await client.aclose()


async def test_admin_requires_token(redis_url: str, upstream: tuple[Upstream, str],
                                    session: aiohttp.ClientSession) -> None:
    _, url = upstream
    text = config_text(redis_url=redis_url, upstream_url=url, routes=ROUTES)
    async with running_gateway(text) as gateway:
        async with session.get(f"{gateway.admin_url}/admin/v1/pools/acme") as resp:
            assert resp.status == 401
        wrong = {"Authorization": "Bearer wrong"}
        async with session.get(f"{gateway.admin_url}/admin/v1/pools/acme", headers=wrong) as resp:
            assert resp.status == 401
        async with session.get(f"{gateway.admin_url}/admin/v1/pools/acme",
                               headers=ADMIN_HEADERS) as resp:
            assert resp.status == 404
        async with session.get(f"{gateway.admin_url}/healthz") as resp:
            assert resp.status == 200
        async with session.get(f"{gateway.admin_url}/readyz") as resp:
            assert resp.status == 200

"""No ticket is spent twice or lost: two gateway processes charge one pool concurrently."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from tests.support import ADMIN_HEADERS, GatewayProcess, bearer, config_text

pytestmark = pytest.mark.slow


@pytest.fixture
async def counting_upstream() -> AsyncIterator[tuple[list[str], str]]:
    hits: list[str] = []

    async def handle(request: web.Request) -> web.Response:
        hits.append(request.path)
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    yield hits, str(server.make_url("")).rstrip("/")
    await server.close()


@pytest.fixture
def two_gateways(
    tmp_path: Path, redis_url: str, counting_upstream: tuple[list[str], str]
) -> Iterator[list[GatewayProcess]]:
    _, url = counting_upstream
    routes = """
    - name: one
      match: {path: /one}
      upstream: api
      cost: 1
    - name: three
      match: {path: /three}
      upstream: api
      cost: 3
    """
    config = tmp_path / "gatekeeper.yaml"
    config.write_text(config_text(redis_url=redis_url, upstream_url=url, routes=routes))
    gateways = [GatewayProcess(config, tmp_path / f"gateway-{n}.log") for n in range(2)]
    # Start both before waiting on either, so the second start overlaps the first.
    for gateway in gateways:
        gateway.start()
    yield gateways
    for gateway in gateways:
        gateway.stop()


async def spend(gateways: list[GatewayProcess], path: str, tenant: str, requests: int) -> Counter[int]:
    headers = bearer(tenant)
    connector = aiohttp.TCPConnector(limit=200)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one(number: int) -> int:
            gateway = gateways[number % len(gateways)]
            async with session.get(gateway.proxy_url + path, headers=headers) as response:
                await response.read()
                return response.status

        statuses = await asyncio.gather(*(one(n) for n in range(requests)))
    return Counter(statuses)


async def grant(gateway: GatewayProcess, pool: str, tickets: int) -> None:
    async with aiohttp.ClientSession() as session:
        headers = {**ADMIN_HEADERS, "Idempotency-Key": f"exact-{pool}"}
        async with session.post(f"{gateway.admin_url}/admin/v1/pools/{pool}/grants",
                                json={"tickets": tickets}, headers=headers) as response:
            assert response.status == 201


async def balance(gateway: GatewayProcess, pool: str) -> int:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{gateway.admin_url}/admin/v1/pools/{pool}",
                               headers=ADMIN_HEADERS) as response:
            body = await response.json()
    return int(body["balance"])


async def test_cost_one_pool_fifty(
    two_gateways: list[GatewayProcess], counting_upstream: tuple[list[str], str]
) -> None:
    hits, _ = counting_upstream
    await grant(two_gateways[0], "acme", 50)
    statuses = await spend(two_gateways, "/one", "acme", 500)
    assert statuses == Counter({200: 50, 402: 450})
    assert len(hits) == 50
    assert await balance(two_gateways[1], "acme") == 0


async def test_cost_three_pool_ten(
    two_gateways: list[GatewayProcess], counting_upstream: tuple[list[str], str]
) -> None:
    hits, _ = counting_upstream
    await grant(two_gateways[1], "globex", 10)
    statuses = await spend(two_gateways, "/three", "globex", 500)
    assert statuses == Counter({200: 3, 402: 497})
    assert len(hits) == 3
    assert await balance(two_gateways[0], "globex") == 1

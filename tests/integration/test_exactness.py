"""No ticket is spent twice or lost: two gateway processes charge one pool concurrently."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from tests.support import ADMIN_HEADERS, GatewayProcess, bearer, config_text, upstream_server

pytestmark = pytest.mark.slow


@pytest.fixture
async def counting_upstream() -> AsyncIterator[tuple[list[str], str]]:
    hits: list[str] = []

    async def handle(request: web.Request) -> web.Response:
        hits.append(request.path)
        return web.Response(text="ok")

    async with upstream_server(handle) as url:
        yield hits, url


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


async def spend(
    gateways: list[GatewayProcess], path: str, tenant: str, requests: int
) -> Counter[int]:
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


@pytest.fixture
async def pool_recording_upstream() -> AsyncIterator[tuple[Counter[str], str]]:
    """Upstream that counts successful requests by the pool the gateway charged."""
    charged: Counter[str] = Counter()

    async def handle(request: web.Request) -> web.Response:
        if request.path == "/fail":
            return web.Response(status=500, text="upstream failure")
        charged[request.headers["Gatekeeper-Pool"]] += 1
        return web.Response(text="ok")

    async with upstream_server(handle) as url:
        yield charged, url


async def admin_post(session: aiohttp.ClientSession, gateway: GatewayProcess, path: str,
                     body: dict[str, object], key: str) -> int:
    headers = {**ADMIN_HEADERS, "Idempotency-Key": key}
    async with session.post(gateway.admin_url + path, json=body, headers=headers) as response:
        await response.read()
        return response.status


async def test_four_processes_match_model(
    tmp_path: Path, redis_url: str, pool_recording_upstream: tuple[Counter[str], str]
) -> None:
    charged, url = pool_recording_upstream
    routes = """
    - name: ok
      match: {path: /ok}
      upstream: api
      cost: 2
    - name: fail
      match: {path: /fail}
      upstream: api
      cost: 2
    """
    config = tmp_path / "gatekeeper.yaml"
    config.write_text(config_text(redis_url=redis_url, upstream_url=url, routes=routes))
    gateways = [GatewayProcess(config, tmp_path / f"gateway-{n}.log") for n in range(4)]
    for gateway in gateways:
        gateway.start()
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=200)) as session:
            assert await admin_post(session, gateways[0], "/admin/v1/pools/acme/grants",
                                    {"tickets": 400}, "seed-acme") == 201
            assert await admin_post(session, gateways[1], "/admin/v1/pools/acme%2Fml/grants",
                                    {"tickets": 100}, "seed-ml") == 201

            async def request(number: int) -> int:
                gateway = gateways[number % 4]
                path = "/fail" if number % 5 == 0 else "/ok"
                headers = bearer("acme", team="ml") if number % 2 else bearer("acme")
                async with session.get(gateway.proxy_url + path, headers=headers) as response:
                    await response.read()
                    return response.status

            async def grant(number: int) -> int:
                return await admin_post(session, gateways[number % 4],
                                        "/admin/v1/pools/acme/grants", {"tickets": 10},
                                        f"grant-{number}")

            async def transfer(number: int) -> int:
                body = {"from": "acme", "to": "acme/ml", "tickets": 15}
                return await admin_post(session, gateways[number % 4], "/admin/v1/transfers",
                                        body, f"transfer-{number}")

            results = await asyncio.gather(
                *(request(n) for n in range(2000)),
                *(grant(n) for n in range(30)),
                *(transfer(n) for n in range(30)),
            )
        request_statuses = Counter(results[:2000])
        granted = 10 * results[2000:2030].count(201)
        moved = 15 * results[2030:].count(200)

        acme = await balance(gateways[2], "acme")
        ml = await balance(gateways[3], "acme%2Fml")
    finally:
        for gateway in gateways:
            gateway.stop()

    assert set(request_statuses) <= {200, 402, 500}
    assert request_statuses[200] == charged["acme"] + charged["acme/ml"]
    assert acme == 400 + granted - moved - 2 * charged["acme"]
    assert ml == 100 + moved - 2 * charged["acme/ml"]

    verify = subprocess.run(
        [sys.executable, "-m", "gatekeeper", "ledger", "verify", "--config", str(config),
         "--tenant", "acme"],
        capture_output=True, text=True, timeout=60, env=gateways[0].env,
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr

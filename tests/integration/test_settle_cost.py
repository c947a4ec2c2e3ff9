"""Settling to the upstream's reported cost through a gateway: headers show what was charged.

The route charges 5 tickets up front and settles to the ``X-Usage-Tickets`` header of the
upstream's response. A pool that cannot pay the difference is charged down to its floor, and
``Ticket-Cost`` then shows what was really charged.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from prometheus_client import REGISTRY
from structlog.testing import capture_logs

from gatekeeper import metrics
from tests.support import bearer, config_text, running_gateway

ROUTES = """
- name: metered
  match: {path: /v1/metered}
  upstream: api
  cost: 5
  cost_header: X-Usage-Tickets
- name: metered-critical
  match: {path: /v1/metered-critical}
  upstream: api
  cost: 5
  critical: true
  cost_header: X-Usage-Tickets
"""


@pytest.fixture
async def upstream_url() -> AsyncIterator[str]:
    """An upstream that reports the cost given in the request's ``usage`` query parameter."""

    async def metered(request: web.Request) -> web.Response:
        return web.json_response({"ok": True},
                                 headers={"X-Usage-Tickets": request.query["usage"]})

    app = web.Application()
    app.router.add_get("/v1/{name}", metered)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    yield str(server.make_url("")).rstrip("/")
    await server.close()


def charged_total(route: str) -> float:
    metrics.fold()
    labels = {"route": route}
    return REGISTRY.get_sample_value("gatekeeper_tickets_charged_total", labels) or 0.0


async def call(session: aiohttp.ClientSession, url: str) -> tuple[int, str, str]:
    async with session.get(url, headers=bearer("acme")) as response:
        await response.read()
        return (response.status, response.headers["Ticket-Cost"],
                response.headers["Ticket-Balance"])


async def test_capped_cost_in_headers(redis_url: str, upstream_url: str) -> None:
    text = config_text(redis_url=redis_url, upstream_url=upstream_url, routes=ROUTES)
    before = charged_total("metered")
    async with running_gateway(text) as gateway, aiohttp.ClientSession() as session:
        await gateway.grant(session, "acme", 12)
        with capture_logs() as logs:
            outcome = await call(session, f"{gateway.proxy_url}/v1/metered?usage=20")
        found = await gateway.ledger.get_pool("acme")
    capped = [line for line in logs if line["event"] == "actual_cost_capped"]
    assert outcome == (200, "12", "0")
    assert found is not None
    assert found["balance"] == 0
    assert len(capped) == 1
    assert capped[0]["reported"] == 20
    assert capped[0]["charged"] == 12
    assert capped[0]["charge_id"]
    assert charged_total("metered") - before == 12


async def test_capped_at_overdraft(redis_url: str, upstream_url: str) -> None:
    text = config_text(redis_url=redis_url, upstream_url=upstream_url, routes=ROUTES)
    async with running_gateway(text) as gateway, aiohttp.ClientSession() as session:
        await gateway.grant(session, "acme", 10)
        await gateway.ledger.configure_pool("acme", {"overdraft": "4"}, actor="test",
                                            change="{}")
        outcome = await call(session, f"{gateway.proxy_url}/v1/metered-critical?usage=30")
    assert outcome == (200, "14", "-4")


async def test_lower_cost_in_headers(redis_url: str, upstream_url: str) -> None:
    text = config_text(redis_url=redis_url, upstream_url=upstream_url, routes=ROUTES)
    async with running_gateway(text) as gateway, aiohttp.ClientSession() as session:
        await gateway.grant(session, "acme", 12)
        with capture_logs() as logs:
            outcome = await call(session, f"{gateway.proxy_url}/v1/metered?usage=2")
    assert outcome == (200, "2", "10")
    assert not [line for line in logs if line["event"] == "actual_cost_capped"]


async def test_paid_higher_cost_in_headers(redis_url: str, upstream_url: str) -> None:
    text = config_text(redis_url=redis_url, upstream_url=upstream_url, routes=ROUTES)
    async with running_gateway(text) as gateway, aiohttp.ClientSession() as session:
        await gateway.grant(session, "acme", 12)
        with capture_logs() as logs:
            outcome = await call(session, f"{gateway.proxy_url}/v1/metered?usage=9")
    assert outcome == (200, "9", "3")
    assert not [line for line in logs if line["event"] == "actual_cost_capped"]

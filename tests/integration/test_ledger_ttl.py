"""``ledger.charge_ttl_s``: its check against the upstream timeouts, reloads and the records."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest
import redis
from aiohttp import web
from aiohttp.test_utils import TestServer

from gatekeeper.config import parse_config
from gatekeeper.errors import ConfigError
from gatekeeper.runtime import restart_required
from tests.support import bearer, config_text, running_gateway

ROUTES = """
- name: echo
  match: {path: /v1/echo}
  upstream: api
  cost: 2
"""


def gateway_config(redis_url: str, upstream_url: str, *, ledger: str = "",
                   upstream_extra: str = "") -> str:
    return config_text(redis_url=redis_url, upstream_url=upstream_url, routes=ROUTES,
                       upstream_extra=upstream_extra, extra=ledger)


def problems_of(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "gk.yaml")
    return caught.value.problems


@pytest.fixture
async def upstream_url() -> AsyncIterator[str]:
    async def echo(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_get("/v1/echo", echo)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    yield str(server.make_url("")).rstrip("/")
    await server.close()


def test_default_ttl() -> None:
    config = parse_config(gateway_config("redis://127.0.0.1:1", "http://127.0.0.1:2"))
    assert config.ledger.charge_ttl_s == 3600


def test_ttl_below_read_timeouts_rejected() -> None:
    text = gateway_config("redis://127.0.0.1:1", "http://127.0.0.1:2",
                          upstream_extra="read_timeout_s: 100",
                          ledger="ledger: {charge_ttl_s: 299}")
    problems = problems_of(text)
    assert len(problems) == 1
    assert problems[0].startswith("ledger: charge_ttl_s must be at least 300, 3 times")
    assert "upstreams.api.read_timeout_s is 100" in problems[0]
    assert "(got 299)" in problems[0]


def test_default_ttl_checked_too() -> None:
    text = gateway_config("redis://127.0.0.1:1", "http://127.0.0.1:2",
                          upstream_extra="read_timeout_s: 1500")
    problems = problems_of(text)
    assert len(problems) == 1
    assert "(got 3600)" in problems[0]


def test_ttl_at_minimum_accepted() -> None:
    text = gateway_config("redis://127.0.0.1:1", "http://127.0.0.1:2",
                          upstream_extra="read_timeout_s: 100",
                          ledger="ledger: {charge_ttl_s: 300}")
    assert parse_config(text).ledger.charge_ttl_s == 300


@pytest.mark.parametrize("value", ["0", "'600'", "1.5"])
def test_invalid_ttl_rejected(value: str) -> None:
    text = gateway_config("redis://127.0.0.1:1", "http://127.0.0.1:2",
                          ledger=f"ledger: {{charge_ttl_s: {value}}}")
    problems = problems_of(text)
    assert len(problems) == 1
    assert problems[0].startswith("ledger.charge_ttl_s: ")


def test_ttl_change_needs_restart() -> None:
    running = parse_config(gateway_config("redis://127.0.0.1:1", "http://127.0.0.1:2"))
    candidate = parse_config(gateway_config("redis://127.0.0.1:1", "http://127.0.0.1:2",
                                            ledger="ledger: {charge_ttl_s: 7200}"))
    problems = restart_required(running, candidate)
    assert problems == ["ledger.charge_ttl_s: changed; restart the gateway to apply it, "
                        "a reload cannot"]


async def test_charge_record_uses_ttl(redis_url: str, redis_sync: redis.Redis,
                                      upstream_url: str) -> None:
    text = gateway_config(redis_url, upstream_url, ledger="ledger: {charge_ttl_s: 900}")
    async with running_gateway(text) as gateway, aiohttp.ClientSession() as session:
        await gateway.grant(session, "acme", 10)
        async with session.get(f"{gateway.proxy_url}/v1/echo",
                               headers=bearer("acme")) as response:
            assert response.status == 200
    records = list(redis_sync.scan_iter("gk:{acme}:charge:*"))
    assert len(records) == 1
    assert 800 < redis_sync.ttl(records[0]) <= 900

"""``/metrics`` on the admin listener: open, Prometheus text, summed over every worker."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from gatekeeper import metrics
from tests.support import (
    GatewayProcess,
    Load,
    bearer,
    config_text,
    grant,
    metric,
    read_metrics,
    start_gateway,
    upstream_server,
)

ROUTES = """
- name: echo
  match: {path: /v1/echo}
  upstream: api
  cost: 2
- name: broken
  match: {path: /v1/broken}
  upstream: api
  cost: 3
"""


@pytest.fixture
async def upstream_url() -> AsyncIterator[str]:
    async def echo(request: web.Request) -> web.Response:
        if request.path == "/v1/broken":
            return web.json_response({"error": "down"}, status=502)
        return web.json_response({"ok": True})

    async with upstream_server(echo) as url:
        yield url


def text_for(tmp_path: Path, redis_url: str, upstream_url: str, extra: str = "") -> str:
    return config_text(redis_url=redis_url, upstream_url=upstream_url, routes=ROUTES,
                       extra=f"ledger: {{journal_path: '{tmp_path / 'journal'}'}}\n{extra}")


def served_by(gateway: GatewayProcess) -> set[int]:
    return {int(line["pid"]) for line in gateway.find_log("request") if line.get("route")}


async def stop(gateway: GatewayProcess) -> int:
    return await asyncio.to_thread(gateway.stop)


async def get(session: aiohttp.ClientSession, url: str, tenant: str = "acme") -> int:
    async with session.get(url, headers=bearer(tenant)) as response:
        return response.status


async def test_metrics_open_and_counted(tmp_path: Path, redis_url: str, upstream_url: str,
                                        session: aiohttp.ClientSession) -> None:
    gateway = start_gateway(tmp_path, text_for(tmp_path, redis_url, upstream_url))
    try:
        await grant(session, gateway.admin_url, "acme", 8)
        statuses = [await get(session, f"{gateway.proxy_url}/v1/broken")]
        statuses += [await get(session, f"{gateway.proxy_url}/v1/echo") for _ in range(5)]
        statuses.append(await get(session, f"{gateway.proxy_url}/v1/absent"))
        async with session.get(f"{gateway.admin_url}/metrics") as response:
            content_type = response.headers["Content-Type"]
            status = response.status
        samples = await read_metrics(session, gateway.admin_url)
    finally:
        await stop(gateway)
    assert statuses == [502, 200, 200, 200, 200, 402, 404]
    assert status == 200
    assert content_type.startswith("text/plain; version=0.0.4")
    assert metric(samples, "gatekeeper_requests_total", route="echo", status_class="2xx") == 4
    assert metric(samples, "gatekeeper_requests_total", route="echo", status_class="4xx") == 1
    assert metric(samples, "gatekeeper_requests_total", route="broken", status_class="5xx") == 1
    assert metric(samples, "gatekeeper_requests_total", route="_unmatched",
                  status_class="4xx") == 1
    assert metric(samples, "gatekeeper_tickets_charged_total", route="echo") == 8
    assert metric(samples, "gatekeeper_tickets_charged_total", route="broken") == 3
    assert metric(samples, "gatekeeper_tickets_refunded_total", route="broken") == 3
    assert metric(samples, "gatekeeper_payment_required_total", route="echo") == 1
    assert metric(samples, "gatekeeper_upstream_duration_seconds_count", route="echo") == 4
    assert metric(samples, "gatekeeper_upstream_duration_seconds_count", route="broken") == 1
    assert metric(samples, "gatekeeper_ledger_duration_seconds_count", operation="charge") == 6
    assert metric(samples, "gatekeeper_ledger_up") == 1
    assert not any(name.startswith("gatekeeper_tenant_") for name, _labels in samples)


async def test_tenant_labels(tmp_path: Path, redis_url: str, upstream_url: str,
                             session: aiohttp.ClientSession) -> None:
    gateway = start_gateway(tmp_path, text_for(tmp_path, redis_url, upstream_url,
                                               "metrics: {tenant_labels: true}"))
    try:
        await grant(session, gateway.admin_url, "acme", 10)
        await get(session, f"{gateway.proxy_url}/v1/echo")
        samples = await read_metrics(session, gateway.admin_url)
    finally:
        await stop(gateway)
    assert metric(samples, "gatekeeper_tenant_requests_total", tenant="acme", route="echo",
                  status_class="2xx") == 1
    assert metric(samples, "gatekeeper_tenant_tickets_charged_total", tenant="acme",
                  route="echo") == 2
    assert metric(samples, "gatekeeper_pool_balance_tickets", pool="acme") == 8


async def test_metrics_sum_workers(tmp_path: Path, redis_url: str, upstream_url: str,
                                   session: aiohttp.ClientSession) -> None:
    gateway = start_gateway(tmp_path, text_for(tmp_path, redis_url, upstream_url), workers=2)
    try:
        await grant(session, gateway.admin_url, "acme", 1_000_000)
        load = Load(f"{gateway.proxy_url}/v1/echo", bearer("acme"), clients=8).start()
        await load.wait_for(lambda seen: len(seen) >= 100 and len(served_by(gateway)) == 2,
                            "requests served by both workers")
        outcomes = await load.stop()
        # Each worker folds its buffered counts every metrics.FOLD_INTERVAL_S; once one
        # scrape has seen every request, every later scrape must agree with it.
        for _ in range(100):
            first = await read_metrics(session, gateway.admin_url)
            if metric(first, "gatekeeper_requests_total", route="echo",
                      status_class="2xx") == len(outcomes):
                break
            await asyncio.sleep(metrics.FOLD_INTERVAL_S / 5)
        scrapes = [await read_metrics(session, gateway.admin_url) for _ in range(6)]
    finally:
        await stop(gateway)
    counted = {metric(samples, "gatekeeper_requests_total", route="echo", status_class="2xx")
               for samples in scrapes}
    charged = {metric(samples, "gatekeeper_tickets_charged_total", route="echo")
               for samples in scrapes}
    assert {outcome.status for outcome in outcomes} == {200}
    assert counted == {len(outcomes)}
    assert charged == {2 * len(outcomes)}

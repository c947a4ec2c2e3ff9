"""SIGTERM: readiness turns false, listeners close, requests in flight finish, exit 0."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from tests.support import (
    GatewayProcess,
    balance_of,
    bearer,
    config_text,
    grant,
    start_gateway,
    wait_until,
    wait_until_async,
)

ROUTES = """
- name: slow
  match: {path: /v1/slow}
  upstream: api
  cost: 1
- name: slow-fail
  match: {path: /v1/slow-fail}
  upstream: api
  cost: 5
"""
IN_FLIGHT = 4


class SlowUpstream:
    """Holds every request until ``release`` is set; ``/v1/slow-fail`` then returns 503."""

    def __init__(self) -> None:
        self.arrived = 0
        self.release = asyncio.Event()

    async def handle(self, request: web.Request) -> web.Response:
        self.arrived += 1
        await self.release.wait()
        if request.path == "/v1/slow-fail":
            return web.json_response({"error": "unavailable"}, status=503)
        return web.json_response({"ok": True})


@pytest.fixture
async def upstream() -> AsyncIterator[tuple[SlowUpstream, str]]:
    slow = SlowUpstream()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", slow.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    yield slow, str(server.make_url("")).rstrip("/")
    slow.release.set()
    await server.close()


def text_for(tmp_path: Path, redis_url: str, upstream_url: str) -> str:
    return config_text(redis_url=redis_url, upstream_url=upstream_url, routes=ROUTES,
                       extra=f"ledger: {{journal_path: '{tmp_path / 'journal'}'}}\n"
                             "server: {shutdown_grace_s: 60}")


async def readiness(session: aiohttp.ClientSession, gateway: GatewayProcess) -> int:
    """Return /readyz's status, or 0 when the admin listener refuses the connection."""
    try:
        async with session.get(f"{gateway.admin_url}/readyz") as response:
            return response.status
    except aiohttp.ClientConnectionError:
        return 0


async def test_sigterm_finishes_slow_requests(tmp_path: Path, redis_url: str,
                                              upstream: tuple[SlowUpstream, str]) -> None:
    slow, upstream_url = upstream
    gateway = start_gateway(tmp_path, text_for(tmp_path, redis_url, upstream_url))
    async with aiohttp.ClientSession() as session, aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(force_close=True)) as fresh:
        await grant(session, gateway.admin_url, "acme", 100)
        requests = [asyncio.create_task(session.get(f"{gateway.proxy_url}/v1/slow",
                                                    headers=bearer("acme")))
                    for _ in range(IN_FLIGHT)]
        requests.append(asyncio.create_task(session.get(f"{gateway.proxy_url}/v1/slow-fail",
                                                        headers=bearer("acme"))))

        async def all_arrived() -> bool:
            return slow.arrived == IN_FLIGHT + 1

        await wait_until_async(all_arrived, what="every request at the upstream")
        assert gateway.process is not None
        gateway.process.send_signal(signal.SIGTERM)
        wait_until(lambda: gateway.find_log("worker_stopping"), what="the worker draining")

        async def not_ready() -> bool:
            return await readiness(fresh, gateway) != 200

        await wait_until_async(not_ready, what="/readyz to turn false")
        try:
            async with fresh.get(f"{gateway.proxy_url}/v1/slow", headers=bearer("acme")):
                refused = False
        except aiohttp.ClientConnectionError:
            refused = True
        slow.release.set()
        responses = await asyncio.gather(*requests)
        statuses = [response.status for response in responses]
        headers = [dict(response.headers) for response in responses]
        for response in responses:
            response.release()
    code = await asyncio.to_thread(gateway.process.wait, 60)
    assert code == 0
    assert refused
    assert statuses == [200] * IN_FLIGHT + [503]
    assert headers[-1]["Ticket-Cost"] == "0"
    assert gateway.find_log("gatekeeper_stopped")
    assert slow.arrived == IN_FLIGHT + 1


async def test_refund_settled_before_exit(tmp_path: Path, redis_url: str,
                                          upstream: tuple[SlowUpstream, str]) -> None:
    """A refund owed by a request in flight at SIGTERM reaches Redis before the exit."""
    slow, upstream_url = upstream
    config = tmp_path / "gateway.yaml"
    config.write_text(text_for(tmp_path, redis_url, upstream_url))
    gateway = GatewayProcess(config, tmp_path / "gateway.log", args=("--workers", "1")).start()
    async with aiohttp.ClientSession() as session:
        await grant(session, gateway.admin_url, "acme", 100)
        pending = asyncio.create_task(session.get(f"{gateway.proxy_url}/v1/slow-fail",
                                                  headers=bearer("acme")))

        async def arrived() -> bool:
            return slow.arrived == 1

        await wait_until_async(arrived, what="the request at the upstream")
        assert gateway.process is not None
        gateway.process.send_signal(signal.SIGTERM)
        wait_until(lambda: gateway.find_log("worker_stopping"), what="the worker draining")
        slow.release.set()
        response = await pending
        response.release()
        code = await asyncio.to_thread(gateway.process.wait, 60)
        after = GatewayProcess(config, tmp_path / "after.log", args=("--workers", "1")).start()
        try:
            balance = await balance_of(session, after.admin_url, "acme")
        finally:
            await asyncio.to_thread(after.stop)
    assert code == 0
    assert response.status == 503
    assert balance == 100

"""``gatekeeper serve --workers N``: one supervisor, N worker processes sharing the sockets."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from tests.support import (
    GatewayProcess,
    Load,
    balance_of,
    bearer,
    config_text,
    grant,
    start_gateway,
    upstream_server,
    wait_until,
    worker_pids,
)

ROUTES = """
- name: echo
  match: {path: /v1/echo}
  upstream: api
  cost: 1
"""


@pytest.fixture
async def upstream_url() -> AsyncIterator[str]:
    async def echo(request: web.Request) -> web.Response:
        return web.json_response({"pid": os.getpid()})

    async with upstream_server(echo) as url:
        yield url


def text_for(tmp_path: Path, redis_url: str, upstream_url: str) -> str:
    return config_text(redis_url=redis_url, upstream_url=upstream_url, routes=ROUTES,
                       extra=f"ledger: {{journal_path: '{tmp_path / 'journal'}'}}")


def served_by(gateway: GatewayProcess) -> set[int]:
    """Return the pids of workers that logged a charged request."""
    return {int(line["pid"]) for line in gateway.find_log("request") if line.get("route")}


async def statuses_of(gateway: GatewayProcess, count: int) -> list[int]:
    """Send ``count`` requests, each on a new connection, and return their statuses."""
    statuses = []
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=connector) as session:
        for _ in range(count):
            async with session.get(f"{gateway.proxy_url}/v1/echo",
                                   headers=bearer("acme")) as response:
                statuses.append(response.status)
    return statuses


async def stop(gateway: GatewayProcess) -> int:
    return await asyncio.to_thread(gateway.stop)


async def test_killed_worker_replaced(tmp_path: Path, redis_url: str, upstream_url: str,
                                      session: aiohttp.ClientSession) -> None:
    gateway = start_gateway(tmp_path, text_for(tmp_path, redis_url, upstream_url), workers=2)
    try:
        await grant(session, gateway.admin_url, "acme", 1_000)
        first = wait_until(lambda: worker_pids(gateway) if len(worker_pids(gateway)) == 2
                           else None, what="two workers")
        victim = min(first)
        os.kill(victim, signal.SIGKILL)
        meanwhile = await statuses_of(gateway, 10)
        replacement = wait_until(lambda: worker_pids(gateway) - first, what="a new worker")
        statuses = await statuses_of(gateway, 20)
        exits = gateway.find_log("worker_exited")
        restarts = gateway.find_log("worker_restarted")
    finally:
        code = await stop(gateway)
    assert len(replacement) == 1
    assert meanwhile == [200] * 10
    assert statuses == [200] * 20
    assert exits[0]["pid"] == victim
    assert exits[0]["signal"] == "SIGKILL"
    assert restarts[0]["previous_pid"] == victim
    assert restarts[0]["pid"] in replacement
    assert code == 0


async def test_workers_share_accounting(tmp_path: Path, redis_url: str, upstream_url: str,
                                        session: aiohttp.ClientSession) -> None:
    """Requests spread over both workers charge the one pool exactly once each."""
    gateway = start_gateway(tmp_path, text_for(tmp_path, redis_url, upstream_url), workers=2)
    try:
        await grant(session, gateway.admin_url, "acme", 1_000_000)
        load = Load(f"{gateway.proxy_url}/v1/echo", bearer("acme"), clients=8).start()
        await load.wait_for(lambda seen: len(seen) >= 200 and len(served_by(gateway)) == 2,
                            "requests served by both workers")
        outcomes = await load.stop()
        balance = await balance_of(session, gateway.admin_url, "acme")
    finally:
        await stop(gateway)
    assert {outcome.status for outcome in outcomes} == {200}
    assert balance == 1_000_000 - len(outcomes)


async def test_one_start_line(tmp_path: Path, redis_url: str, upstream_url: str) -> None:
    gateway = start_gateway(tmp_path, text_for(tmp_path, redis_url, upstream_url), workers=3)
    code = await stop(gateway)
    started = gateway.find_log("gatekeeper_started")
    assert len(started) == 1
    assert started[0]["workers"] == 3
    assert len(gateway.find_log("worker_started")) == 3
    assert len(gateway.find_log("worker_stopped")) == 3
    assert code == 0

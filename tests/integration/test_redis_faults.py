"""Redis faults under load: killed, black-holed and restarted, in both ``on_ledger_error`` modes.

Each test runs ``gatekeeper serve`` against a private Redis that keeps an append-only file
with ``appendfsync always``, so a kill loses no acknowledged write and the final balance
can be checked exactly: every 200 response costs one ticket, nothing else does. The
gateway's journal is empty (``gatekeeper_journal_pending_entries`` 0) before balances are
read, so deferred charges and refunds of unknown outcomes have been replayed.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import pytest
import redis
from aiohttp import web
from prometheus_client import REGISTRY

from gatekeeper.embedded import EmbeddedRedis
from tests.support import (
    GatewayProcess,
    Load,
    Outcome,
    TcpProxy,
    admin_json,
    balance_of,
    bearer,
    config_text,
    grant,
    metric,
    read_metrics,
    running_gateway,
    start_gateway,
    upstream_server,
    wait_until_async,
)

GRANT = 1_000_000
DURABLE = ["--appendfsync", "always"]


def routes(mode: str) -> str:
    return f"""
- name: echo
  match: {{path: /v1/echo}}
  upstream: api
  cost: 1
  on_ledger_error: {mode}
"""


def gateway_config(tmp_path: Path, redis_url: str, upstream_url: str, mode: str,
                   max_deferred: int = 1_000_000) -> str:
    extra = (f"ledger: {{journal_path: '{tmp_path / 'journal'}', "
             f"max_deferred_tickets: {max_deferred}}}\n"
             "server: {shutdown_grace_s: 5}")
    return config_text(redis_url=redis_url, upstream_url=upstream_url, routes=routes(mode),
                       extra=extra)


@pytest.fixture
async def upstream_url() -> AsyncIterator[str]:
    async def echo(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    async with upstream_server(echo) as url:
        yield url


@pytest.fixture
def durable_redis(private_redis: Callable[..., EmbeddedRedis]) -> EmbeddedRedis:
    return private_redis(extra_args=DURABLE)


def deferred(outcome: Outcome) -> bool:
    return outcome.headers.get("Ticket-Metering") == "deferred"


def metered(outcome: Outcome) -> bool:
    return outcome.status == 200 and "Ticket-Balance" in outcome.headers


def count(outcomes: list[Outcome], test: Callable[[Outcome], bool]) -> int:
    return sum(1 for outcome in outcomes if test(outcome))


async def wait_replayed(session: aiohttp.ClientSession, gateway: GatewayProcess) -> None:
    """Wait until Redis is up for the gateway and its journal is empty."""

    async def replayed() -> bool:
        samples = await read_metrics(session, gateway.admin_url)
        return (metric(samples, "gatekeeper_ledger_up") == 1
                and metric(samples, "gatekeeper_journal_pending_entries") == 0
                and metric(samples, "gatekeeper_deferred_tickets") == 0)

    await wait_until_async(replayed, what="an empty journal")


async def stop(gateway: GatewayProcess) -> int:
    return await asyncio.to_thread(gateway.stop)


async def run_fault(session: aiohttp.ClientSession, gateway: GatewayProcess,
                    fault: Callable[[], None], repair: Callable[[], None],
                    during: Callable[[Outcome], bool]) -> list[Outcome]:
    """Run a load, inject ``fault`` once metered responses flow, ``repair`` once responses
    show the fault (``during``), and stop once metering is back; return every outcome."""
    await grant(session, gateway.admin_url, "acme", GRANT)
    load = Load(f"{gateway.proxy_url}/v1/echo", bearer("acme")).start()
    await load.wait_for(lambda seen: count(seen, metered) >= 20, "metered responses")
    fault()
    start = len(load.outcomes)
    await load.wait_for(lambda seen: count(seen[start:], during) >= 20, "responses in the fault")
    repair()
    start = len(load.outcomes)
    await load.wait_for(lambda seen: count(seen[start:], metered) >= 20,
                        "metered responses after the repair")
    return await load.stop()


async def test_killed_fail_closed(tmp_path: Path, durable_redis: EmbeddedRedis, upstream_url: str,
                                  session: aiohttp.ClientSession) -> None:
    gateway = start_gateway(tmp_path, gateway_config(tmp_path, durable_redis.url, upstream_url,
                                                     "fail_closed"))
    try:
        outcomes = await run_fault(session, gateway, durable_redis.kill, durable_redis.start,
                                   lambda outcome: outcome.status == 503)
        await wait_replayed(session, gateway)
        balance = await balance_of(session, gateway.admin_url, "acme")
    finally:
        await stop(gateway)
    refused = [outcome for outcome in outcomes if outcome.status == 503]
    assert {outcome.status for outcome in outcomes} == {200, 503}
    assert all(outcome.headers.get("Retry-After") == "1" for outcome in refused)
    assert balance == GRANT - count(outcomes, lambda outcome: outcome.status == 200)


async def test_killed_fail_open(tmp_path: Path, durable_redis: EmbeddedRedis, upstream_url: str,
                                session: aiohttp.ClientSession) -> None:
    gateway = start_gateway(tmp_path, gateway_config(tmp_path, durable_redis.url, upstream_url,
                                                     "fail_open"))
    try:
        outcomes = await run_fault(session, gateway, durable_redis.kill, durable_redis.start,
                                   deferred)
        await wait_replayed(session, gateway)
        balance = await balance_of(session, gateway.admin_url, "acme")
        samples = await read_metrics(session, gateway.admin_url)
    finally:
        await stop(gateway)
    assert {outcome.status for outcome in outcomes} == {200}
    assert balance == GRANT - len(outcomes)
    assert metric(samples, "gatekeeper_fail_open_requests_total", route="echo") == count(
        outcomes, deferred)


async def test_blackhole_fail_closed(tmp_path: Path, durable_redis: EmbeddedRedis,
                                     upstream_url: str, session: aiohttp.ClientSession) -> None:
    proxy = TcpProxy(durable_redis.host, durable_redis.port).start()
    gateway = start_gateway(tmp_path, gateway_config(tmp_path, proxy.url, upstream_url,
                                                     "fail_closed"))
    try:
        outcomes = await run_fault(session, gateway, proxy.blackhole, proxy.restore,
                                   lambda outcome: outcome.status == 503)
        await wait_replayed(session, gateway)
        balance = await balance_of(session, gateway.admin_url, "acme")
    finally:
        await stop(gateway)
        proxy.stop()
    assert {outcome.status for outcome in outcomes} == {200, 503}
    assert balance == GRANT - count(outcomes, lambda outcome: outcome.status == 200)


async def test_blackhole_fail_open(tmp_path: Path, durable_redis: EmbeddedRedis,
                                   upstream_url: str, session: aiohttp.ClientSession) -> None:
    proxy = TcpProxy(durable_redis.host, durable_redis.port).start()
    gateway = start_gateway(tmp_path, gateway_config(tmp_path, proxy.url, upstream_url,
                                                     "fail_open"))
    try:
        outcomes = await run_fault(session, gateway, proxy.blackhole, proxy.restore, deferred)
        await wait_replayed(session, gateway)
        balance = await balance_of(session, gateway.admin_url, "acme")
    finally:
        await stop(gateway)
        proxy.stop()
    assert {outcome.status for outcome in outcomes} == {200}
    assert balance == GRANT - len(outcomes)


async def test_blackhole_answers_in_time(tmp_path: Path, durable_redis: EmbeddedRedis,
                                         upstream_url: str,
                                         session: aiohttp.ClientSession) -> None:
    """A request never hangs on a silent Redis: the client's 5 s limit is never reached."""
    proxy = TcpProxy(durable_redis.host, durable_redis.port).start()
    gateway = start_gateway(tmp_path, gateway_config(tmp_path, proxy.url, upstream_url,
                                                     "fail_closed"))
    statuses = []
    try:
        await grant(session, gateway.admin_url, "acme", 100)
        proxy.blackhole()
        timeout = aiohttp.ClientTimeout(total=5)
        for _ in range(5):
            async with session.get(f"{gateway.proxy_url}/v1/echo", headers=bearer("acme"),
                                   timeout=timeout) as response:
                statuses.append(response.status)
    finally:
        proxy.restore()
        await stop(gateway)
        proxy.stop()
    assert statuses == [503] * 5


async def test_deferral_limit(tmp_path: Path, durable_redis: EmbeddedRedis, upstream_url: str,
                              session: aiohttp.ClientSession) -> None:
    gateway = start_gateway(tmp_path, gateway_config(tmp_path, durable_redis.url, upstream_url,
                                                     "fail_open", max_deferred=3))
    try:
        await grant(session, gateway.admin_url, "acme", 100)
        durable_redis.kill()
        statuses = []
        for _ in range(5):
            async with session.get(f"{gateway.proxy_url}/v1/echo",
                                   headers=bearer("acme")) as response:
                statuses.append((response.status, response.headers.get("Ticket-Metering")))
        samples = await read_metrics(session, gateway.admin_url)
        durable_redis.start()
        await wait_replayed(session, gateway)
        balance = await balance_of(session, gateway.admin_url, "acme")
    finally:
        await stop(gateway)
    assert statuses == [(200, "deferred")] * 3 + [(503, None)] * 2
    assert metric(samples, "gatekeeper_deferred_tickets") == 3
    assert metric(samples, "gatekeeper_deferred_tickets_limit") == 3
    assert metric(samples, "gatekeeper_deferred_limit_rejections_total", route="echo") == 2
    assert balance == 97


async def test_deferred_charges_become_debt(tmp_path: Path, durable_redis: EmbeddedRedis,
                                            upstream_url: str,
                                            session: aiohttp.ClientSession) -> None:
    """Requests forwarded while Redis was down are charged in full; the pool owes the rest."""
    gateway = start_gateway(tmp_path, gateway_config(tmp_path, durable_redis.url, upstream_url,
                                                     "fail_open"))
    try:
        await grant(session, gateway.admin_url, "acme", 3)
        durable_redis.kill()
        statuses = []
        for _ in range(5):
            async with session.get(f"{gateway.proxy_url}/v1/echo",
                                   headers=bearer("acme")) as response:
                statuses.append((response.status, response.headers.get("Ticket-Metering")))
        durable_redis.start()
        await wait_replayed(session, gateway)
        status, pool = await admin_json(session, "GET", f"{gateway.admin_url}/admin/v1/pools/acme")
        samples = await read_metrics(session, gateway.admin_url)
    finally:
        await stop(gateway)
    assert statuses == [(200, "deferred")] * 5
    assert status == 200
    assert pool["balance"] == -2
    assert pool["debt"] == 2
    assert metric(samples, "gatekeeper_journal_replayed_entries_total", operation="charge",
                  result="charged") == 5
    assert metric(samples, "gatekeeper_deferred_unpaid_tickets_total") == 0
    assert not gateway.find_log("deferred_charge_unpaid")


async def test_journal_survives_restart(tmp_path: Path, durable_redis: EmbeddedRedis,
                                        upstream_url: str,
                                        session: aiohttp.ClientSession) -> None:
    """Deferred charges of a gateway stopped during the outage are replayed by the next one."""
    text = gateway_config(tmp_path, durable_redis.url, upstream_url, "fail_open")
    first = start_gateway(tmp_path, text, name="first")
    await grant(session, first.admin_url, "acme", 100)
    durable_redis.kill()
    for _ in range(4):
        async with session.get(f"{first.proxy_url}/v1/echo", headers=bearer("acme")) as response:
            assert response.status == 200
    assert await stop(first) == 0
    left = list((tmp_path / "journal").glob("journal-*.jsonl"))
    durable_redis.start()
    second = start_gateway(tmp_path, text, name="second")
    try:
        await wait_replayed(session, second)
        balance = await balance_of(session, second.admin_url, "acme")
    finally:
        await stop(second)
    assert len(left) == 1
    assert balance == 96
    assert second.find_log("journal_adopted")


async def test_metering_resumes(tmp_path: Path, durable_redis: EmbeddedRedis, upstream_url: str,
                                session: aiohttp.ClientSession) -> None:
    """After Redis returns, requests are charged again without any operator action."""
    gateway = start_gateway(tmp_path, gateway_config(tmp_path, durable_redis.url, upstream_url,
                                                     "fail_closed"))
    try:
        await grant(session, gateway.admin_url, "acme", 100)
        durable_redis.kill()
        async with session.get(f"{gateway.proxy_url}/v1/echo", headers=bearer("acme")) as response:
            assert response.status == 503
        durable_redis.start()

        async def charged() -> bool:
            async with session.get(f"{gateway.proxy_url}/v1/echo",
                                   headers=bearer("acme")) as response:
                return response.status == 200

        await wait_until_async(charged, what="a charged request after the restart")
    finally:
        await stop(gateway)
    assert gateway.find_log("ledger_up")


async def test_no_500_on_redis_fault(tmp_path: Path, durable_redis: EmbeddedRedis,
                                     upstream_url: str, session: aiohttp.ClientSession) -> None:
    gateway = start_gateway(tmp_path, gateway_config(tmp_path, durable_redis.url, upstream_url,
                                                     "fail_closed"))
    try:
        await grant(session, gateway.admin_url, "acme", 100)
        durable_redis.kill()
        statuses = set()
        for _ in range(10):
            async with session.get(f"{gateway.proxy_url}/v1/echo",
                                   headers=bearer("acme")) as response:
                statuses.add(response.status)
    finally:
        durable_redis.start()
        code = await stop(gateway)
    assert statuses == {503}
    assert code == 0
    assert not gateway.find_log("request_failed")


async def test_sigterm_with_redis_down(tmp_path: Path, durable_redis: EmbeddedRedis,
                                       upstream_url: str, session: aiohttp.ClientSession) -> None:
    gateway = start_gateway(tmp_path, gateway_config(tmp_path, durable_redis.url, upstream_url,
                                                     "fail_open"))
    await grant(session, gateway.admin_url, "acme", 100)
    durable_redis.kill()
    async with session.get(f"{gateway.proxy_url}/v1/echo", headers=bearer("acme")) as response:
        assert response.status == 200
    code = await asyncio.to_thread(gateway.stop, signal.SIGTERM)
    assert code == 0
    assert gateway.find_log("journal_closed_with_pending")


async def test_abandoned_charges_no_leak(tmp_path: Path, durable_redis: EmbeddedRedis,
                                         upstream_url: str,
                                         session: aiohttp.ClientSession) -> None:
    """Clients that leave while their charge is in flight leak no Redis connection, and the
    charges they leave behind are refunded. The pool has 2 connections and 30 clients leave.
    Charges that found no free connection in time were never sent; they count as refunds
    that found no charge."""
    proxy = TcpProxy(durable_redis.host, durable_redis.port).start()
    text = gateway_config(tmp_path, proxy.url, upstream_url, "fail_closed").replace(
        f"redis: {{url: '{proxy.url}'}}", f"redis: {{url: '{proxy.url}', max_connections: 2}}")
    gateway = start_gateway(tmp_path, text)
    abandoned = 0
    try:
        await grant(session, gateway.admin_url, "acme", 100)
        # Each Redis round trip now takes 0.12 s, within the 0.2 s Redis timeout, and each
        # client leaves after 0.03 s.
        proxy.slow_down(0.06)
        impatient = aiohttp.ClientTimeout(total=0.03)
        for _ in range(30):
            try:
                async with session.get(f"{gateway.proxy_url}/v1/echo", headers=bearer("acme"),
                                       timeout=impatient):
                    pass
            except TimeoutError:
                abandoned += 1
        proxy.slow_down(0)
        statuses = []
        for _ in range(10):
            async with session.get(f"{gateway.proxy_url}/v1/echo",
                                   headers=bearer("acme")) as response:
                statuses.append(response.status)
        await wait_replayed(session, gateway)
        balance = await balance_of(session, gateway.admin_url, "acme")
        samples = await read_metrics(session, gateway.admin_url)
        clients = redis.Redis(host=durable_redis.host, port=durable_redis.port).info("clients")
    finally:
        await stop(gateway)
        proxy.stop()
    refunds = [metric(samples, "gatekeeper_journal_replayed_entries_total", operation="refund",
                      result=result) for result in ("refunded", "no_charge")]
    assert abandoned == 30
    assert statuses == [200] * 10
    assert balance == 90
    assert sum(refunds) == 30
    assert refunds[0] > 0
    # The gateway's two pooled connections and this test's client.
    assert clients["connected_clients"] <= 3


async def test_busy_pool_not_down(tmp_path: Path, redis_url: str, upstream_url: str,
                                  session: aiohttp.ClientSession) -> None:
    """A charge that finds every pooled connection in use gets 503, but Redis stays up and
    no refund is journaled, because the charge was never sent."""
    text = gateway_config(tmp_path, redis_url, upstream_url, "fail_closed").replace(
        f"redis: {{url: '{redis_url}'}}", f"redis: {{url: '{redis_url}', max_connections: 1}}")
    async with running_gateway(text) as gateway:
        await gateway.grant(session, "acme", 10)
        pool = gateway.ledger.client.connection_pool
        connection = await pool.get_connection()
        try:
            async with session.get(f"{gateway.proxy_url}/v1/echo",
                                   headers=bearer("acme")) as response:
                status = response.status
            up = REGISTRY.get_sample_value("gatekeeper_ledger_up")
            pending = REGISTRY.get_sample_value("gatekeeper_journal_pending_entries")
        finally:
            await pool.release(connection)
        found = await gateway.ledger.get_pool("acme")
    assert status == 503
    assert up == 1
    assert pending == 0
    assert found is not None
    assert found["balance"] == 10

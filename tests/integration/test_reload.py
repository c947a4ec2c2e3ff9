"""Hot reload of a running ``gatekeeper serve``: SIGHUP, file change and the admin call.

The route's cost shows which config served a request (``Ticket-Cost``). Config files are
rewritten in one rename; ``write_config(keep_mtime=True)`` keeps the size and mtime, so the
file watcher does not notice and only the trigger under test reloads.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from tests.support import (
    ADMIN_HEADERS,
    GatewayProcess,
    Load,
    admin_json,
    bearer,
    config_text,
    grant,
    metric,
    read_metrics,
    start_gateway,
    upstream_server,
    wait_until,
    worker_pids,
    write_config,
)


def routes(cost: int) -> str:
    return f"""
- name: echo
  match: {{path: /v1/echo}}
  upstream: api
  cost: {cost}
"""


@pytest.fixture
async def upstream_url() -> AsyncIterator[str]:
    async def echo(request: web.Request) -> web.Response:
        await asyncio.sleep(0.02)
        return web.json_response({"ok": True})

    async with upstream_server(echo) as url:
        yield url


def text_for(redis_url: str, upstream_url: str, cost: int, tmp_path: Path) -> str:
    return config_text(redis_url=redis_url, upstream_url=upstream_url, routes=routes(cost),
                       extra=f"ledger: {{journal_path: '{tmp_path / 'journal'}'}}")


async def cost_of_request(session: aiohttp.ClientSession, gateway: GatewayProcess) -> str | None:
    async with session.get(f"{gateway.proxy_url}/v1/echo", headers=bearer("acme")) as response:
        return response.headers.get("Ticket-Cost")


def reloaded(gateway: GatewayProcess, version: str, trigger: str | None = None) -> set[int]:
    """Return the pids of workers that logged ``config_reloaded`` to ``version``."""
    return {int(line["pid"]) for line in gateway.find_log("config_reloaded")
            if line["version"] == version and "worker" in line
            and (trigger is None or line["trigger"] == trigger)}


async def stop(gateway: GatewayProcess) -> int:
    return await asyncio.to_thread(gateway.stop)


async def test_sighup_reload(tmp_path: Path, redis_url: str, upstream_url: str,
                             session: aiohttp.ClientSession) -> None:
    """SIGHUP to the supervisor reaches both workers."""
    gateway = start_gateway(tmp_path, text_for(redis_url, upstream_url, 1, tmp_path), workers=2)
    try:
        await grant(session, gateway.admin_url, "acme", 100)
        workers = wait_until(lambda: worker_pids(gateway) if len(worker_pids(gateway)) == 2
                             else None, what="two workers")
        before = await cost_of_request(session, gateway)
        write_config(gateway.config_path, text_for(redis_url, upstream_url, 2, tmp_path),
                     keep_mtime=True)
        assert gateway.process is not None
        gateway.process.send_signal(signal.SIGHUP)
        reloaded_workers = wait_until(
            lambda: reloaded(gateway, _version(gateway), "sighup") == workers and workers,
            what="both workers reloaded by SIGHUP")
        after = await cost_of_request(session, gateway)
    finally:
        await stop(gateway)
    assert before == "1"
    assert after == "2"
    assert reloaded_workers == workers
    assert gateway.find_log("config_reloaded")[0]["trigger"] == "sighup"


def _version(gateway: GatewayProcess) -> str:
    """The version the supervisor accepted last."""
    accepted = [line for line in gateway.find_log("config_reloaded") if "worker" not in line]
    return str(accepted[-1]["version"]) if accepted else ""


async def test_file_change_reload(tmp_path: Path, redis_url: str, upstream_url: str,
                                  session: aiohttp.ClientSession) -> None:
    gateway = start_gateway(tmp_path, text_for(redis_url, upstream_url, 1, tmp_path))
    try:
        await grant(session, gateway.admin_url, "acme", 100)
        write_config(gateway.config_path, text_for(redis_url, upstream_url, 3, tmp_path))
        wait_until(lambda: reloaded(gateway, _version(gateway), "sighup"),
                   what="workers reloaded after the file changed")
        after = await cost_of_request(session, gateway)
    finally:
        await stop(gateway)
    supervisor_lines = [line for line in gateway.find_log("config_reloaded")
                        if "worker" not in line]
    assert after == "3"
    assert supervisor_lines[0]["trigger"] == "file_change"


async def test_admin_reload(tmp_path: Path, redis_url: str, upstream_url: str,
                            session: aiohttp.ClientSession) -> None:
    gateway = start_gateway(tmp_path, text_for(redis_url, upstream_url, 1, tmp_path))
    try:
        await grant(session, gateway.admin_url, "acme", 100)
        _status, before = await admin_json(session, "GET", f"{gateway.admin_url}/admin/v1/config")
        write_config(gateway.config_path, text_for(redis_url, upstream_url, 2, tmp_path),
                     keep_mtime=True)
        status, body = await admin_json(session, "POST",
                                        f"{gateway.admin_url}/admin/v1/config/reload")
        _status, after = await admin_json(session, "GET", f"{gateway.admin_url}/admin/v1/config")
        cost = await cost_of_request(session, gateway)
    finally:
        await stop(gateway)
    assert status == 200
    assert body["result"] == "applied"
    assert body["version"] != before["version"]
    assert after["version"] == body["version"]
    assert after["loaded_at"].endswith("Z")
    assert cost == "2"


async def test_repeated_reload_keeps_applied(tmp_path: Path, redis_url: str,
                                             upstream_url: str,
                                             session: aiohttp.ClientSession) -> None:
    """A second reload of the version just applied does not hide that it was applied."""
    gateway = start_gateway(tmp_path, text_for(redis_url, upstream_url, 1, tmp_path))
    url = f"{gateway.admin_url}/admin/v1/config"
    try:
        write_config(gateway.config_path, text_for(redis_url, upstream_url, 2, tmp_path),
                     keep_mtime=True)
        _status, first = await admin_json(session, "POST", f"{url}/reload")
        _status, second = await admin_json(session, "POST", f"{url}/reload")
        _status, shown = await admin_json(session, "GET", url)
    finally:
        await stop(gateway)
    assert first["result"] == "applied"
    assert second["result"] == "unchanged"
    assert shown["last_reload"]["result"] == "applied"


async def test_admin_reload_needs_token(tmp_path: Path, redis_url: str, upstream_url: str,
                                        session: aiohttp.ClientSession) -> None:
    gateway = start_gateway(tmp_path, text_for(redis_url, upstream_url, 1, tmp_path))
    try:
        async with session.post(f"{gateway.admin_url}/admin/v1/config/reload") as response:
            reload_status = response.status
        async with session.get(f"{gateway.admin_url}/admin/v1/config") as response:
            read_status = response.status
        async with session.get(f"{gateway.admin_url}/admin/v1/config",
                               headers=ADMIN_HEADERS) as response:
            allowed_status = response.status
    finally:
        await stop(gateway)
    assert reload_status == 401
    assert read_status == 401
    assert allowed_status == 200


async def test_broken_config_admin_422(tmp_path: Path, redis_url: str, upstream_url: str,
                                       session: aiohttp.ClientSession) -> None:
    gateway = start_gateway(tmp_path, text_for(redis_url, upstream_url, 1, tmp_path))
    try:
        await grant(session, gateway.admin_url, "acme", 100)
        _status, before = await admin_json(session, "GET", f"{gateway.admin_url}/admin/v1/config")
        broken = text_for(redis_url, upstream_url, 1, tmp_path).replace("cost: 1", "cost: -5")
        write_config(gateway.config_path, broken, keep_mtime=True)
        status, problem = await admin_json(session, "POST",
                                           f"{gateway.admin_url}/admin/v1/config/reload")
        cost = await cost_of_request(session, gateway)
        _status, after = await admin_json(session, "GET", f"{gateway.admin_url}/admin/v1/config")
        samples = await read_metrics(session, gateway.admin_url)
    finally:
        await stop(gateway)
    assert status == 422
    assert problem["type"].endswith("/invalid-config")
    assert problem["problems"] == [
        "routes[0].cost: Input should be greater than or equal to 0 (got -5)"]
    assert problem["file"] == str(gateway.config_path)
    assert cost == "1"
    assert after["version"] == before["version"]
    assert metric(samples, "gatekeeper_config_reloads_total", result="invalid") == 1


async def test_broken_config_sighup_logged(tmp_path: Path, redis_url: str, upstream_url: str,
                                           session: aiohttp.ClientSession) -> None:
    gateway = start_gateway(tmp_path, text_for(redis_url, upstream_url, 1, tmp_path))
    try:
        await grant(session, gateway.admin_url, "acme", 100)
        write_config(gateway.config_path, "routes: [\n")
        assert gateway.process is not None
        gateway.process.send_signal(signal.SIGHUP)
        failures = wait_until(lambda: gateway.find_log("config_reload_failed"),
                              what="the failed reload in the log")
        cost = await cost_of_request(session, gateway)
        samples = await read_metrics(session, gateway.admin_url)
    finally:
        await stop(gateway)
    assert failures[0]["file"] == str(gateway.config_path)
    assert failures[0]["problems"][0].startswith("line 2: invalid YAML")
    assert cost == "1"
    assert metric(samples, "gatekeeper_config_reloads_total", result="invalid") >= 1


async def test_restart_setting_refused(tmp_path: Path, redis_url: str, upstream_url: str,
                                       session: aiohttp.ClientSession) -> None:
    gateway = start_gateway(tmp_path, text_for(redis_url, upstream_url, 1, tmp_path))
    try:
        moved = text_for(redis_url, upstream_url, 2, tmp_path).replace(
            "admin: '127.0.0.1:0'", "admin: '127.0.0.1:1'")
        write_config(gateway.config_path, moved, keep_mtime=True)
        status, problem = await admin_json(session, "POST",
                                           f"{gateway.admin_url}/admin/v1/config/reload")
        _status, current = await admin_json(session, "GET", f"{gateway.admin_url}/admin/v1/config")
    finally:
        await stop(gateway)
    assert status == 422
    assert problem["result"] == "restart_required"
    assert problem["problems"] == [
        "listen: changed; restart the gateway to apply it, a reload cannot"]
    assert current["version"] == problem["version"]


async def test_admin_reload_reaches_workers(tmp_path: Path, redis_url: str, upstream_url: str,
                                            session: aiohttp.ClientSession) -> None:
    gateway = start_gateway(tmp_path, text_for(redis_url, upstream_url, 1, tmp_path), workers=2)
    try:
        wait_until(lambda: len(worker_pids(gateway)) == 2, what="two workers")
        write_config(gateway.config_path, text_for(redis_url, upstream_url, 2, tmp_path),
                     keep_mtime=True)
        status, body = await admin_json(session, "POST",
                                        f"{gateway.admin_url}/admin/v1/config/reload")
        pids = wait_until(lambda: reloaded(gateway, body["version"]) == worker_pids(gateway)
                          and reloaded(gateway, body["version"]),
                          what="both workers on the new version")
    finally:
        await stop(gateway)
    assert status == 200
    assert pids


async def test_reload_under_load(tmp_path: Path, redis_url: str, upstream_url: str,
                                 session: aiohttp.ClientSession) -> None:
    """Five reloads while four clients keep sending: every request succeeds."""
    gateway = start_gateway(tmp_path, text_for(redis_url, upstream_url, 1, tmp_path), workers=2)
    try:
        await grant(session, gateway.admin_url, "acme", 1_000_000)
        load = Load(f"{gateway.proxy_url}/v1/echo", bearer("acme")).start()
        for round_number in range(5):
            cost = 2 + round_number % 2
            start = len(load.outcomes)
            write_config(gateway.config_path, text_for(redis_url, upstream_url, cost, tmp_path))
            await load.wait_for(
                lambda seen, cost=cost, start=start: any(
                    outcome.headers.get("Ticket-Cost") == str(cost) for outcome in seen[start:]),
                f"responses at cost {cost}")
        outcomes = await load.stop()
        closed = wait_until(lambda: len(gateway.find_log("snapshot_closed")) >= 5,
                            what="replaced snapshots closed")
    finally:
        await stop(gateway)
    assert {outcome.status for outcome in outcomes} == {200}
    assert closed

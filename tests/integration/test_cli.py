"""The real CLI in a subprocess: check-config exit codes, serve's start line and clean stop."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp
import jwt
from aiohttp import web
from aiohttp.test_utils import TestServer

from tests.support import ADMIN_HEADERS, ENV, JWT_SECRET, GatewayProcess, bearer, config_text

ROOT = Path(__file__).resolve().parents[2]
ROUTES = """
- name: echo
  match: {path: /v1/echo}
  upstream: api
"""


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gatekeeper", *args],
        capture_output=True, text=True, timeout=60, cwd=ROOT, env=env,
    )


def test_check_config_valid() -> None:
    result = run_cli("check-config", "config/gatekeeper.yaml")
    assert result.returncode == 0
    assert "config/gatekeeper.yaml: OK" in result.stdout


def test_check_config_invalid(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(config_text(redis_url="embedded", upstream_url="http://127.0.0.1:1",
                               routes=ROUTES + "  cost: -4\n"))
    result = run_cli("check-config", str(bad))
    assert result.returncode == 1
    assert f"{bad}: routes[0].cost: Input should be greater than or equal to 0 (got -4)" in (
        result.stderr
    )


def test_check_config_missing_file(tmp_path: Path) -> None:
    result = run_cli("check-config", str(tmp_path / "absent.yaml"))
    assert result.returncode == 1
    assert "cannot read the file" in result.stderr


async def test_serve_logs_start_and_stops(tmp_path: Path, redis_url: str) -> None:
    config = tmp_path / "gatekeeper.yaml"
    config.write_text(config_text(redis_url=redis_url, upstream_url="http://127.0.0.1:1",
                                  routes=ROUTES))
    gateway = GatewayProcess(config, tmp_path / "gateway.log").start()
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{gateway.admin_url}/readyz") as response:
            assert response.status == 200
    code = gateway.stop(signal.SIGINT)
    started = gateway.find_log("gatekeeper_started")
    assert code == 0
    assert len(started) == 1
    assert started[0]["proxy"].startswith("127.0.0.1:")
    assert gateway.find_log("gatekeeper_stopped")


async def test_serve_embedded_redis_keeps_balance(tmp_path: Path) -> None:
    config = tmp_path / "gatekeeper.yaml"
    text = config_text(redis_url="embedded", upstream_url="http://127.0.0.1:1", routes=ROUTES)
    config.write_text(text.replace("redis: {url: 'embedded'}",
                                   f"redis: {{url: embedded, data_dir: '{tmp_path / 'data'}'}}"))
    for round_number in range(2):
        gateway = GatewayProcess(config, tmp_path / f"gateway-{round_number}.log").start()
        async with aiohttp.ClientSession() as session:
            if round_number == 0:
                headers = {**ADMIN_HEADERS, "Idempotency-Key": "embedded-1"}
                async with session.post(f"{gateway.admin_url}/admin/v1/pools/acme/grants",
                                        json={"tickets": 7}, headers=headers) as response:
                    assert response.status == 201
            async with session.get(f"{gateway.admin_url}/admin/v1/pools/acme",
                                   headers=ADMIN_HEADERS) as response:
                body = await response.json()
        assert gateway.stop() == 0
        assert body["balance"] == 7
    assert not (tmp_path / "data" / "server.addr").exists()


async def test_canonical_line_without_secrets(tmp_path: Path, redis_url: str) -> None:
    config = tmp_path / "gatekeeper.yaml"
    config.write_text(config_text(redis_url=redis_url, upstream_url="http://127.0.0.1:1",
                                  routes=ROUTES))
    gateway = GatewayProcess(config, tmp_path / "gateway.log").start()
    headers = bearer("acme")
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{gateway.proxy_url}/v1/echo", headers=headers) as response:
            assert response.status == 402
        async with session.get(f"{gateway.admin_url}/admin/v1/pools/acme",
                               headers=ADMIN_HEADERS) as response:
            assert response.status == 404
    gateway.stop()
    text = (tmp_path / "gateway.log").read_text()
    lines = [line for line in gateway.find_log("request") if line.get("route") == "echo"]
    assert len(lines) == 1
    assert {"request_id", "tenant", "pool", "route", "cost", "balance", "status"} <= set(lines[0])
    assert lines[0]["status"] == 402
    assert lines[0]["cost"] == 1
    assert lines[0]["charged"] == 0
    assert headers["Authorization"].split()[1] not in text
    assert "integration-admin-token" not in text
    assert "integration-test-secret" not in text


def test_token_command_mints_verifiable_token(tmp_path: Path) -> None:
    config = tmp_path / "gatekeeper.yaml"
    config.write_text(config_text(redis_url="embedded", upstream_url="http://127.0.0.1:1",
                                  routes=ROUTES))
    env = {**os.environ, **ENV}
    result = run_cli("token", "--config", str(config), "--tenant", "acme", "--team", "ml",
                     "--scope", "reports:write", env=env)
    claims = jwt.decode(result.stdout.strip(), JWT_SECRET, algorithms=["HS256"])
    assert result.returncode == 0
    assert claims["tenant_id"] == "acme"
    assert claims["team"] == "ml"
    assert claims["scope"] == "reports:write"


def test_token_command_needs_secret(tmp_path: Path) -> None:
    config = tmp_path / "gatekeeper.yaml"
    config.write_text(config_text(redis_url="embedded", upstream_url="http://127.0.0.1:1",
                                  routes=ROUTES))
    env = {key: value for key, value in os.environ.items() if key != "GK_TEST_JWT_SECRET"}
    result = run_cli("token", "--config", str(config), "--tenant", "acme", env=env)
    assert result.returncode == 1
    assert "GK_TEST_JWT_SECRET is unset or empty" in result.stderr


def test_token_command_rejects_bad_tenant(tmp_path: Path) -> None:
    config = tmp_path / "gatekeeper.yaml"
    config.write_text(config_text(redis_url="embedded", upstream_url="http://127.0.0.1:1",
                                  routes=ROUTES))
    result = run_cli("token", "--config", str(config), "--tenant", "a/b",
                     env={**os.environ, **ENV})
    assert result.returncode == 1
    assert result.stderr.startswith("gatekeeper token: ")
    assert "Traceback" not in result.stderr


def test_check_config_warns_when_nobody_can_be_served(tmp_path: Path) -> None:
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    result = run_cli("check-config", str(empty))
    assert result.returncode == 0
    assert "warning: routes: no routes are defined" in result.stderr
    assert "warning: admin: no token_env or tokens" in result.stderr


async def test_client_gone_mid_upload_logged_499(tmp_path: Path, redis_url: str) -> None:
    received = asyncio.Event()

    async def slow_reader(request: web.Request) -> web.Response:
        received.set()
        await request.read()
        return web.Response(text="done")

    app = web.Application()
    app.router.add_post("/v1/echo", slow_reader)
    upstream = TestServer(app, host="127.0.0.1")
    await upstream.start_server()
    config = tmp_path / "gatekeeper.yaml"
    config.write_text(config_text(redis_url=redis_url,
                                  upstream_url=str(upstream.make_url("")).rstrip("/"),
                                  routes=ROUTES))
    gateway = GatewayProcess(config, tmp_path / "gateway.log").start()
    try:
        async with aiohttp.ClientSession() as session:
            headers = {**ADMIN_HEADERS, "Idempotency-Key": "gone-1"}
            async with session.post(f"{gateway.admin_url}/admin/v1/pools/acme/grants",
                                    json={"tickets": 5}, headers=headers) as response:
                assert response.status == 201
        host, port = gateway.proxy_url.removeprefix("http://").rsplit(":", 1)
        _, writer = await asyncio.open_connection(host, int(port))
        head = (f"POST /v1/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n"
                f"Authorization: {bearer('acme')['Authorization']}\r\n\r\n")
        writer.write(head.encode() + b"x" * 1000)
        await writer.drain()
        await asyncio.wait_for(received.wait(), 30)
        writer.close()
        await writer.wait_closed()
        for _ in range(300):
            lines = [line for line in gateway.find_log("request") if line.get("route") == "echo"]
            if lines:
                break
            await asyncio.sleep(0.1)
    finally:
        gateway.stop()
        await upstream.close()
    assert lines[0]["status"] == 499
    assert not gateway.find_log("request_failed")


async def test_malformed_request_keeps_json_log(tmp_path: Path, redis_url: str) -> None:
    config = tmp_path / "gatekeeper.yaml"
    config.write_text(config_text(redis_url=redis_url, upstream_url="http://127.0.0.1:1",
                                  routes=ROUTES))
    gateway = GatewayProcess(config, tmp_path / "gateway.log").start()
    try:
        host, port = gateway.proxy_url.removeprefix("http://").rsplit(":", 1)
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(b"GET /v1/echo HTTP/1.1\r\nHost: x\r\n"
                     b"Content-Length: 1\r\nContent-Length: 2\r\n\r\nab")
        status_line = await reader.readline()
        writer.close()
    finally:
        gateway.stop()
    raw_lines = (tmp_path / "gateway.log").read_text().splitlines()
    assert status_line.startswith(b"HTTP/1.1 400") or status_line.startswith(b"HTTP/1.0 400")
    assert len(gateway.log_lines()) == len(raw_lines)
    assert "Traceback" not in "\n".join(raw_lines)

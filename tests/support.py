"""Helpers shared by integration tests: config text, an in-process gateway, a gateway process.

Both kinds of gateway run the real code against the test session's Redis; the process kind
runs ``python -m gatekeeper serve`` and reads the listen addresses from its start log line.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import aiohttp
from aiohttp.test_utils import TestServer

from gatekeeper.app import build_admin_app, build_proxy_app
from gatekeeper.auth.mint import mint_token
from gatekeeper.ledger import Ledger, connect_redis
from gatekeeper.runtime import RuntimeHolder, Source, build_snapshot

JWT_SECRET = "integration-test-secret-0123456789abcdef"
ADMIN_TOKEN = "integration-admin-token"
ENV = {"GK_TEST_JWT_SECRET": JWT_SECRET, "GK_TEST_ADMIN_TOKEN": ADMIN_TOKEN}


def config_text(
    *,
    redis_url: str,
    upstream_url: str,
    routes: str,
    upstream_extra: str = "",
    extra: str = "",
    listen: str = "listen: {proxy: '127.0.0.1:0', admin: '127.0.0.1:0'}",
) -> str:
    """Return a config with HS256 tokens, an admin token, one upstream and the given routes."""
    return "\n".join([
        listen,
        f"redis: {{url: '{redis_url}'}}",
        "auth:",
        "  jwt: {algorithms: [HS256], secret_env: GK_TEST_JWT_SECRET, team_claim: team}",
        "admin: {token_env: GK_TEST_ADMIN_TOKEN}",
        "upstreams:",
        "  api:",
        f"    url: {upstream_url}",
        textwrap.indent(textwrap.dedent(upstream_extra).strip(), "    "),
        "routes:",
        textwrap.indent(textwrap.dedent(routes).strip(), "  "),
        textwrap.dedent(extra).strip(),
        "",
    ])


def token(tenant: str, **claims: Any) -> str:
    return mint_token(JWT_SECRET, tenant=tenant, **claims)


def bearer(tenant: str, **claims: Any) -> dict[str, str]:
    return {"Authorization": f"Bearer {token(tenant, **claims)}"}


ADMIN_HEADERS = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@dataclass
class Gateway:
    """An in-process gateway: proxy and admin test servers sharing one ledger."""

    proxy_url: str
    admin_url: str
    ledger: Ledger
    holder: RuntimeHolder

    async def grant(self, session: aiohttp.ClientSession, pool: str, tickets: int) -> None:
        """Grant tickets through the admin API, as an operator would."""
        headers = {**ADMIN_HEADERS, "Idempotency-Key": f"grant-{pool}-{time.monotonic_ns()}"}
        url = f"{self.admin_url}/admin/v1/pools/{pool.replace('/', '%2F')}/grants"
        async with session.post(url, json={"tickets": tickets}, headers=headers) as response:
            if response.status != 201:
                raise AssertionError(f"grant failed: {response.status} {await response.text()}")


@asynccontextmanager
async def running_gateway(text: str) -> AsyncIterator[Gateway]:
    """Run a gateway for ``text`` in this event loop until the block ends."""
    snapshot = build_snapshot(Source("test.yaml", text), env={**os.environ, **ENV})
    config = snapshot.config
    client = await connect_redis(config.redis.url, timeout_ms=config.redis.timeout_ms,
                                 max_connections=config.redis.max_connections)
    ledger = Ledger(client, key_prefix=config.redis.key_prefix)
    holder = RuntimeHolder(snapshot)
    await snapshot.start()
    proxy = TestServer(build_proxy_app(holder, ledger), host="127.0.0.1")
    admin = TestServer(build_admin_app(holder, ledger, ready=ledger.ping), host="127.0.0.1")
    await proxy.start_server()
    await admin.start_server()
    try:
        yield Gateway(str(proxy.make_url("")).rstrip("/"), str(admin.make_url("")).rstrip("/"),
                      ledger, holder)
    finally:
        await proxy.close()
        await admin.close()
        await holder.current.close()
        await ledger.close()


class GatewayProcess:
    """``python -m gatekeeper serve`` in a subprocess, with its JSON log kept in a file."""

    def __init__(self, config_path: Path, log_path: Path, env: Mapping[str, str] | None = None,
                 args: tuple[str, ...] = ()) -> None:
        self.config_path = config_path
        self.log_path = log_path
        self.env = {**os.environ, **ENV, "GATEKEEPER_LOG_FORMAT": "json", **(env or {})}
        self.args = args
        self.process: subprocess.Popen[bytes] | None = None
        self.proxy_url = ""
        self.admin_url = ""
        self._log: IO[bytes] | None = None

    def start(self, timeout_s: float = 30.0) -> GatewayProcess:
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gatekeeper", "serve", "--config", str(self.config_path),
             *self.args],
            stdout=self._log, stderr=subprocess.STDOUT, env=self.env,
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            started = self.find_log("gatekeeper_started")
            if started:
                self.proxy_url = f"http://{started[0]['proxy']}"
                self.admin_url = f"http://{started[0]['admin']}"
                return self
            if self.process.poll() is not None:
                raise AssertionError(f"gateway exited early:\n{self.log_path.read_text()}")
            time.sleep(0.05)
        raise AssertionError(f"gateway did not start:\n{self.log_path.read_text()}")

    def log_lines(self) -> list[dict[str, Any]]:
        lines = []
        for raw in self.log_path.read_text(errors="replace").splitlines():
            try:
                lines.append(json.loads(raw))
            except json.JSONDecodeError:
                continue
        return lines

    def find_log(self, event: str) -> list[dict[str, Any]]:
        return [line for line in self.log_lines() if line.get("event") == event]

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 30.0) -> int:
        if self.process is None:
            return 0
        if self.process.poll() is None:
            self.process.send_signal(sig)
        code = self.process.wait(timeout=timeout_s)
        if self._log is not None:
            self._log.close()
        return code

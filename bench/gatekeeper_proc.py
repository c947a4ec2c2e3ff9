"""Run the real gateway (``python -m gatekeeper serve``) for the benchmarks.

The gateway gets a generated config: one upstream, one route ``/`` with cost 1 and a body
limit above the 1 GiB streaming test, HS256 tokens from an environment variable and an
admin token. It listens on port 0, and the addresses come from its ``gatekeeper_started``
JSON log line. ``serve`` may run as a supervisor with worker processes. The bench then
measures the one worker (``--workers 1``) that the ``worker_spawned`` log line names.
Tickets are granted through the admin API, as an operator would, and the load uses a token
minted with ``gatekeeper.auth.mint.mint_token``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

from procs import SUT_CPU, Processes

JWT_SECRET = "bench-jwt-secret-0123456789abcdef0123456789"
ADMIN_TOKEN = "bench-admin-token"
TENANT = "bench"
# Above the 1 GiB of the streaming test, so the body limit never cuts it short.
MAX_BODY_BYTES = 4 * 1024**3


def config_text(redis_url: str, upstream_url: str) -> str:
    return f"""\
listen: {{proxy: '127.0.0.1:0', admin: '127.0.0.1:0'}}
redis: {{url: '{redis_url}'}}
auth:
  jwt: {{algorithms: [HS256], secret_env: GK_BENCH_JWT_SECRET}}
admin: {{token_env: GK_BENCH_ADMIN_TOKEN}}
upstreams:
  api: {{url: '{upstream_url}'}}
routes:
  - name: bench
    match: {{path_prefix: /}}
    upstream: api
    cost: 1
    max_body_bytes: {MAX_BODY_BYTES}
"""


def has_workers_flag() -> bool:
    """Return True when ``gatekeeper serve`` accepts ``--workers``."""
    help_text = subprocess.run(
        [sys.executable, "-m", "gatekeeper", "serve", "--help"],
        capture_output=True, text=True, check=False, timeout=60,
    )
    return "--workers" in help_text.stdout


@dataclass
class Gateway:
    """A running gateway process and what a client needs to reach it."""

    process: subprocess.Popen[bytes]
    proxy_url: str
    admin_url: str
    log_path: Path
    # The process that serves requests: the worker when a supervisor started one.
    # NOTE: read once at start, so it goes stale if the supervisor restarts the worker.
    pid: int = 0

    def grant(self, tickets: int, pool: str = TENANT) -> dict[str, object]:
        """Grant ``tickets`` to ``pool`` through the admin API and return the response body."""
        request = urllib.request.Request(
            f"{self.admin_url}/admin/v1/pools/{pool}/grants",
            data=json.dumps({"tickets": tickets, "note": "bench"}).encode(),
            method="POST",
            headers={
                "Authorization": f"Bearer {ADMIN_TOKEN}",
                "Idempotency-Key": f"bench-{uuid.uuid4().hex}",
                "Content-Type": "application/json",
            },
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            if response.status != 201:
                raise RuntimeError(f"grant to {pool!r} failed with HTTP {response.status}")
            body: dict[str, object] = json.load(response)
            return body


def bearer_token(tenant: str = TENANT) -> str:
    from gatekeeper.auth.mint import mint_token

    return mint_token(JWT_SECRET, tenant=tenant, ttl_s=24 * 3600)


def start_gateway(
    processes: Processes,
    work_dir: Path,
    redis_url: str,
    upstream_url: str,
    *,
    name: str = "gatekeeper",
    extra_env: dict[str, str] | None = None,
    timeout_s: float = 60.0,
) -> Gateway:
    """Start ``gatekeeper serve`` pinned to the CPU under test and wait for its start line.

    Args:
        processes: owner of the child process.
        work_dir: where the config file goes.
        redis_url: the private Redis server's URL.
        upstream_url: base URL of the upstream.
        name: name of the log file in the run's log directory.
        extra_env: more environment variables for the gateway and its workers.
        timeout_s: how long to wait for the ``gatekeeper_started`` line.

    Raises:
        RuntimeError: the gateway exited or did not log its start in time.
    """
    config_path = work_dir / f"{name}.yaml"
    config_path.write_text(config_text(redis_url, upstream_url), encoding="utf-8")
    env = {
        **os.environ,
        "GK_BENCH_JWT_SECRET": JWT_SECRET,
        "GK_BENCH_ADMIN_TOKEN": ADMIN_TOKEN,
        "GATEKEEPER_LOG_FORMAT": "json",
        **(extra_env or {}),
    }
    command = [sys.executable, "-m", "gatekeeper", "serve", "--config", str(config_path)]
    if has_workers_flag():
        command += ["--workers", "1"]
    process = processes.start(name, command, cpu=SUT_CPU, env=env)
    log_path = processes.log_path(name)

    deadline = time.monotonic() + timeout_s
    gateway = None
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"gatekeeper exited with code {process.returncode}; "
                               f"see {log_path}:\n{_tail(log_path)}")
        if gateway is None:
            started = [line for line in _log_lines(log_path)
                       if line.get("event") == "gatekeeper_started"]
            if started:
                gateway = Gateway(process, f"http://{started[0]['proxy']}",
                                  f"http://{started[0]['admin']}", log_path)
        if gateway is not None and _responds(gateway.admin_url + "/readyz"):
            spawned = [line for line in _log_lines(log_path)
                       if line.get("event") == "worker_spawned"]
            gateway.pid = int(str(spawned[-1]["pid"])) if spawned else process.pid
            return gateway
        time.sleep(0.1)
    raise RuntimeError(f"gatekeeper did not log gatekeeper_started and respond to /readyz in "
                       f"{timeout_s:.0f} s; see {log_path}:\n{_tail(log_path)}")


def _responds(url: str) -> bool:
    """Return True when ``url`` returns any status below 500."""
    try:
        with urllib.request.urlopen(url, timeout=2):
            return True
    except urllib.error.HTTPError as exc:
        return exc.code < 500
    except OSError:
        return False


def _log_lines(log_path: Path) -> list[dict[str, object]]:
    lines = []
    with log_path.open("rb") as log:
        for raw in log:
            try:
                line = json.loads(raw)
            except json.JSONDecodeError:
                continue
            if isinstance(line, dict):
                lines.append(line)
    return lines


def _tail(path: Path, lines: int = 20) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

"""``gatekeeper demo``: the main job end to end on one machine, with nothing to install.

Starts the sample API from ``examples/``, then ``gatekeeper serve`` with embedded Redis in
a fresh data directory, grants the demo tenant a few tickets through the admin API, and
spends them with real requests until one gets 402. Then it keeps serving and prints a curl
command to try. It runs from a source checkout, which has the ``examples/`` folder.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import aiohttp

from gatekeeper.auth.mint import mint_token

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "examples" / "demo.yaml"
SAMPLE_API = ROOT / "examples" / "sample_api.py"
PROXY = "http://127.0.0.1:8080"
ADMIN = "http://127.0.0.1:9090"
TENANT = "demo"
GRANT = 5


LOG_DIR = ROOT / ".gatekeeper"
DATA_DIR = LOG_DIR / "demo-redis"
LOG_NAMES = ("demo-upstream.log", "demo-gateway.log")


def _start(command: list[str], env: dict[str, str], log_name: str) -> subprocess.Popen[bytes]:
    LOG_DIR.mkdir(exist_ok=True)
    with (LOG_DIR / log_name).open("wb") as log_file:
        return subprocess.Popen(
            command, env=env, cwd=ROOT, start_new_session=True,
            stdout=log_file, stderr=subprocess.STDOUT,
        )


def _last_line(log_name: str) -> str:
    try:
        lines = (LOG_DIR / log_name).read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return lines[-1] if lines else ""


async def _wait_ready(
    session: aiohttp.ClientSession, url: str, children: list[subprocess.Popen[bytes]]
) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for child, log_name in zip(children, LOG_NAMES, strict=True):
            if child.poll() is not None:
                raise RuntimeError(f"{log_name} ended early: {_last_line(log_name)}")
        try:
            async with session.get(url) as response:
                if response.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.1)
    raise RuntimeError(f"{url} did not become ready within 30 s")


async def _script(admin_token: str, token: str, children: list[subprocess.Popen[bytes]]) -> None:
    async with aiohttp.ClientSession() as session:
        await _wait_ready(session, "http://127.0.0.1:8081/public/health", children)
        await _wait_ready(session, f"{ADMIN}/readyz", children)
        print(f"The sample API listens on 127.0.0.1:8081 and gatekeeper on {PROXY} "
              f"(admin {ADMIN}); logs in {LOG_DIR}/demo-*.log")

        grant = {"tickets": GRANT, "note": "demo grant"}
        headers = {"Authorization": f"Bearer {admin_token}", "Idempotency-Key": uuid.uuid4().hex}
        async with session.post(f"{ADMIN}/admin/v1/pools/{TENANT}/grants", json=grant,
                                headers=headers) as response:
            body = await response.json()
            print(f"\nPOST /admin/v1/pools/{TENANT}/grants {grant} -> {response.status}, "
                  f"pool balance {body.get('pool', {}).get('balance')}")

        print("\nSpending tickets: GET /v1/echo costs 1 ticket\n")
        for number in range(1, 50):
            async with session.get(f"{PROXY}/v1/echo",
                                   headers={"Authorization": f"Bearer {token}"}) as response:
                await response.read()
                balance = response.headers.get("Ticket-Balance")
                print(f"  request {number:2}: {response.status}  Ticket-Balance: {balance}")
                if response.status == 402:
                    break


def _stop_on_signal(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def run_demo(*, wait: bool = True) -> int:
    """Run the demo; returns the exit code."""
    if not SAMPLE_API.is_file():
        print(f"gatekeeper demo runs from a source checkout: {SAMPLE_API} is missing. "
              "Clone the repository and run `make demo` there.", file=sys.stderr)
        return 1
    # The children run in their own sessions, so a SIGTERM or SIGHUP to the demo must stop
    # them the same way Ctrl-C does.
    signal.signal(signal.SIGTERM, _stop_on_signal)
    signal.signal(signal.SIGHUP, _stop_on_signal)
    # Each run starts from an empty ledger, so it always grants five tickets and ends in 402.
    shutil.rmtree(DATA_DIR, ignore_errors=True)

    env = dict(os.environ)
    env["GATEKEEPER_DEMO_JWT_SECRET"] = secrets.token_urlsafe(32)
    env["GATEKEEPER_DEMO_ADMIN_TOKEN"] = secrets.token_urlsafe(24)
    env.setdefault("GATEKEEPER_LOG_FORMAT", "console")

    children = [
        _start([sys.executable, str(SAMPLE_API), "--port", "8081"], env, LOG_NAMES[0]),
        _start([sys.executable, "-m", "gatekeeper", "serve", "--config", str(CONFIG)], env,
               LOG_NAMES[1]),
    ]
    token = mint_token(env["GATEKEEPER_DEMO_JWT_SECRET"], tenant=TENANT,
                       issuer="gatekeeper-demo", ttl_s=24 * 3600)
    try:
        asyncio.run(_script(env["GATEKEEPER_DEMO_ADMIN_TOKEN"], token, children))
        print("\nThe gateway keeps serving. Try it by hand:\n")
        print(f"  export TOKEN={token}")
        print(f'  curl -i -H "Authorization: Bearer $TOKEN" {PROXY}/v1/echo\n')
        print(f"  export ADMIN_TOKEN={env['GATEKEEPER_DEMO_ADMIN_TOKEN']}")
        print(f'  curl -s -X POST -H "Authorization: Bearer $ADMIN_TOKEN" '
              f'-H "Idempotency-Key: $(date +%s%N)" -H "Content-Type: application/json" '
              f"-d '{{\"tickets\": 10}}' {ADMIN}/admin/v1/pools/{TENANT}/grants\n")
        print(f"  tail -f {LOG_DIR}/demo-gateway.log    # one line per request\n")
        if wait:
            print("Press Ctrl-C to stop.")
            children[1].wait()
    except KeyboardInterrupt:
        pass
    except RuntimeError as exc:
        print(f"demo failed: {exc}", file=sys.stderr)
        return 1
    finally:
        for child in reversed(children):
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        for child in children:
            try:
                child.wait(timeout=15)
            except subprocess.TimeoutExpired:
                child.kill()
    return 0

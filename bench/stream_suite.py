"""Resident memory of a proxy while it streams a 1 GiB upload and a 1 GiB download.

The proxy sits between this process (the client, on the helper CPU) and the aiohttp
``stream`` upstream of ``upstream.py``. A sampler reads the proxy's VmRSS from
/proc/PID/status every 20 ms during each transfer. Growth is the peak during the transfer
minus the RSS just before it, after a 1 MiB warm-up transfer each way. A proxy that
streams keeps this near its buffer sizes; one that buffers bodies grows by the body size.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path

import aiohttp
import uvloop

import gatekeeper_proc
from procs import HELPER_CPU, SUT_CPU, Processes, free_port, rss_kib, wait_for_port

BENCH_DIR = Path(__file__).parent
GIB = 1024**3
MIB = 1024**2
CHUNK_BYTES = 256 * 1024
SAMPLE_INTERVAL_S = 0.02


async def zeros(total: int) -> AsyncIterator[bytes]:
    chunk = bytes(CHUNK_BYTES)
    left = total
    while left:
        piece = chunk if left >= CHUNK_BYTES else chunk[:left]
        left -= len(piece)
        yield piece


async def upload(session: aiohttp.ClientSession, url: str, total: int,
                 headers: dict[str, str]) -> int:
    """POST ``total`` bytes and return the byte count the upstream reports."""
    sent_headers = {**headers, "Content-Length": str(total),
                    "Content-Type": "application/octet-stream"}
    async with session.post(f"{url}/upload", data=zeros(total), headers=sent_headers) as reply:
        if reply.status != 200:
            raise RuntimeError(f"upload failed with HTTP {reply.status}: {await reply.text()}")
        body = await reply.json()
        return int(body["bytes"])


async def download(session: aiohttp.ClientSession, url: str, total: int,
                   headers: dict[str, str]) -> int:
    """GET ``total`` bytes and return how many arrived."""
    received = 0
    async with session.get(f"{url}/download?bytes={total}", headers=headers) as reply:
        if reply.status != 200:
            raise RuntimeError(f"download failed with HTTP {reply.status}: {await reply.text()}")
        async for chunk in reply.content.iter_chunked(CHUNK_BYTES):
            received += len(chunk)
    return received


async def sampled(pid: int, transfer: Awaitable[int], total: int) -> dict[str, float]:
    """Run ``transfer`` while sampling the RSS of ``pid``; return growth and throughput."""
    before = rss_kib(pid)
    peak = before
    done = asyncio.Event()

    async def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, rss_kib(pid))
            await asyncio.sleep(SAMPLE_INTERVAL_S)

    sampler = asyncio.create_task(sample())
    started = time.perf_counter()
    try:
        moved = await transfer
    finally:
        done.set()
        await sampler
    elapsed = time.perf_counter() - started
    if moved != total:
        raise RuntimeError(f"transfer moved {moved} bytes, expected {total}")
    return {
        "rss_before_mib": before / 1024,
        "rss_peak_mib": peak / 1024,
        "growth_mib": (peak - before) / 1024,
        "seconds": elapsed,
        "mib_per_s": total / MIB / elapsed,
    }


async def measure_proxy(pid: int, url: str, headers: dict[str, str],
                        total: int) -> dict[str, object]:
    timeout = aiohttp.ClientTimeout(total=600)
    async with aiohttp.ClientSession(timeout=timeout, auto_decompress=False) as session:
        await upload(session, url, MIB, headers)
        await download(session, url, MIB, headers)
        return {
            "upload": await sampled(pid, upload(session, url, total, headers), total),
            "download": await sampled(pid, download(session, url, total, headers), total),
        }


def run_stream_suite(processes: Processes, work_dir: Path, redis_url: str,
                     total: int = GIB) -> dict[str, object]:
    """Measure the bare proxy and gatekeeper streaming ``total`` bytes each way."""
    port = free_port()
    upstream = processes.start(
        "stream-upstream",
        [sys.executable, str(BENCH_DIR / "upstream.py"), "stream", "--port", str(port)],
        cpu=HELPER_CPU,
    )
    wait_for_port(port, upstream)
    upstream_url = f"http://127.0.0.1:{port}"
    results: dict[str, object] = {"bytes": total}

    bare_port = free_port()
    bare = processes.start(
        "stream-bare-proxy",
        [sys.executable, str(BENCH_DIR / "bare_proxy.py"), "--port", str(bare_port),
         "--upstream", upstream_url],
        cpu=SUT_CPU,
    )
    wait_for_port(bare_port, bare)
    results["bare aiohttp proxy"] = _run(bare.pid,
                                         f"http://127.0.0.1:{bare_port}", {}, total)

    try:
        gateway = gatekeeper_proc.start_gateway(processes, work_dir, redis_url, upstream_url,
                                                name="gatekeeper-stream")
        gateway.grant(1000)
        headers = {"Authorization": f"Bearer {gatekeeper_proc.bearer_token()}"}
    except (RuntimeError, OSError, ImportError) as exc:
        results["gatekeeper"] = {"error": str(exc)}
        return results
    results["gatekeeper"] = _run(gateway.pid, gateway.proxy_url, headers, total)
    return results


def _run(pid: int, url: str, headers: dict[str, str], total: int) -> dict[str, object]:
    try:
        return uvloop.run(measure_proxy(pid, url, headers, total))
    except (aiohttp.ClientError, RuntimeError, OSError) as exc:
        return {"error": str(exc)}

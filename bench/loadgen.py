"""HTTP/1.1 load generator on raw keep-alive sockets, for machines without wrk.

Run as ``python bench/loadgen.py URL --connections C --duration S [--rate R]``; it prints
one JSON object. Two modes:

- closed loop (no ``--rate``): each connection sends its next request as soon as the last
  response ends, so the result is the maximum rate at that concurrency.
- fixed rate (``--rate R``): requests are due every 1/R seconds whether or not earlier ones
  have returned, and latency counts from when a request was queued, not from when a free
  connection sent it. A slow server therefore shows its queueing delay, as in wrk2, instead
  of hiding it (coordinated omission). The event loop's timers have a resolution of about
  1 ms, so a dispatcher queues every request that has come due each time it wakes, and
  latency starts at that moment. How late the dispatcher woke is reported as
  ``dispatch_late_max_ms``; a large value means the load generator itself was starved.

Latencies go into a log-linear histogram with a relative error below 1 %.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections import Counter, deque
from typing import cast
from urllib.parse import urlsplit

import uvloop

from httpclient import HttpConnection, ResponseError

# Buckets are exact below 256 µs; above, each power of two splits into 128 buckets.
EXACT_MICROSECONDS = 256
SUB_BUCKET_BITS = 7
# In fixed-rate mode, requests still queued this long after the end are counted as unsent.
DRAIN_S = 5.0


class LatencyHistogram:
    """Counts of latencies in log-linear buckets of microseconds."""

    def __init__(self) -> None:
        self.counts: Counter[int] = Counter()
        self.total = 0
        self.max_us = 0

    def record(self, seconds: float) -> None:
        micros = int(seconds * 1e6)
        self.counts[_bucket_floor(micros)] += 1
        self.total += 1
        self.max_us = max(self.max_us, micros)

    def percentile_ms(self, fraction: float) -> float:
        """Return the latency in ms below which ``fraction`` of the samples fall."""
        if not self.total:
            return float("nan")
        rank = fraction * self.total
        seen = 0
        for floor in sorted(self.counts):
            seen += self.counts[floor]
            if seen >= rank:
                return (floor + _bucket_width(floor) / 2) / 1000
        return self.max_us / 1000


def _bucket_floor(micros: int) -> int:
    if micros < EXACT_MICROSECONDS:
        return micros
    shift = micros.bit_length() - 1 - SUB_BUCKET_BITS
    return (micros >> shift) << shift


def _bucket_width(floor: int) -> int:
    if floor < EXACT_MICROSECONDS:
        return 1
    return 1 << (floor.bit_length() - 1 - SUB_BUCKET_BITS)


class Run:
    """Shared state of one measurement: histogram, status counts and errors."""

    def __init__(self, url: str, headers: list[str]) -> None:
        parts = urlsplit(url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        lines = [f"GET {target} HTTP/1.1", f"Host: {parts.netloc}", *headers, "", ""]
        self.request = "\r\n".join(lines).encode()
        self.histogram = LatencyHistogram()
        self.statuses: Counter[int] = Counter()
        self.errors = 0
        self.unsent = 0
        self.dispatch_late_max_s = 0.0

    async def send(self, connection: HttpConnection | None) -> tuple[HttpConnection | None, int]:
        """Send one request; return the connection to reuse (None after an error) and status.

        The status is 0 when the request failed on the wire.
        """
        try:
            if connection is None or connection.closed:
                loop = asyncio.get_running_loop()
                _transport, protocol = await loop.create_connection(
                    HttpConnection, self.host, self.port
                )
                connection = cast(HttpConnection, protocol)
            return connection, await connection.exchange(self.request)
        except (OSError, ResponseError):
            return None, 0

    def record(self, status: int, seconds: float) -> None:
        if status == 0:
            self.errors += 1
            return
        self.statuses[status] += 1
        self.histogram.record(seconds)


async def closed_loop(run: Run, connections: int, warmup_s: float, duration_s: float) -> float:
    start = time.perf_counter()
    record_from = start + warmup_s
    end = record_from + duration_s

    async def worker() -> None:
        connection: HttpConnection | None = None
        while (sent_at := time.perf_counter()) < end:
            connection, status = await run.send(connection)
            if sent_at >= record_from:
                run.record(status, time.perf_counter() - sent_at)

    await asyncio.gather(*(worker() for _ in range(connections)))
    return time.perf_counter() - record_from


async def fixed_rate(
    run: Run, connections: int, rate: float, warmup_s: float, duration_s: float
) -> float:
    due: deque[float] = deque()
    ready = asyncio.Event()
    finished = asyncio.Event()
    start = time.perf_counter()
    record_from = start + warmup_s
    end = record_from + duration_s

    async def dispatch() -> None:
        issued = 0
        while (now := time.perf_counter()) < end:
            while (intended := start + issued / rate) <= now:
                due.append(now)
                if intended >= record_from:
                    run.dispatch_late_max_s = max(run.dispatch_late_max_s, now - intended)
                issued += 1
            ready.set()
            await asyncio.sleep(min(0.001, 1 / rate))
        finished.set()
        ready.set()

    async def worker() -> None:
        connection: HttpConnection | None = None
        while time.perf_counter() < end + DRAIN_S:
            if not due:
                if finished.is_set():
                    return
                ready.clear()
                await ready.wait()
                continue
            queued_at = due.popleft()
            connection, status = await run.send(connection)
            if queued_at >= record_from:
                run.record(status, time.perf_counter() - queued_at)

    await asyncio.gather(dispatch(), *(worker() for _ in range(connections)))
    run.unsent = len(due)
    return duration_s


async def measure(args: argparse.Namespace) -> dict[str, object]:
    run = Run(args.url, args.header)
    if args.rate:
        elapsed = await fixed_rate(run, args.connections, args.rate, args.warmup, args.duration)
    else:
        elapsed = await closed_loop(run, args.connections, args.warmup, args.duration)
    histogram = run.histogram
    return {
        "tool": "bench/loadgen.py",
        "mode": f"fixed rate {args.rate:g}/s" if args.rate else "closed loop",
        "connections": args.connections,
        "duration_s": round(elapsed, 3),
        "requests": histogram.total,
        "errors": run.errors,
        "unsent": run.unsent,
        "statuses": {str(code): count for code, count in sorted(run.statuses.items())},
        "rps": histogram.total / elapsed if elapsed > 0 else 0.0,
        "p50_ms": histogram.percentile_ms(0.50),
        "p90_ms": histogram.percentile_ms(0.90),
        "p99_ms": histogram.percentile_ms(0.99),
        "max_ms": histogram.max_us / 1000,
        "dispatch_late_max_ms": run.dispatch_late_max_s * 1000,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url", help="http://127.0.0.1:PORT/path to GET")
    parser.add_argument("--connections", type=int, default=64, help="keep-alive connections")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds measured")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds sent but not measured")
    parser.add_argument("--rate", type=float, default=0.0,
                        help="requests per second for the fixed-rate mode; 0 means closed loop")
    parser.add_argument("--header", action="append", default=[],
                        help="extra request header 'Name: value'; repeat for several")
    args = parser.parse_args()
    print(json.dumps(uvloop.run(measure(args))))


if __name__ == "__main__":
    main()

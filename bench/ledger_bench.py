"""Ledger figures against a private Redis server; prints one JSON object.

``python bench/ledger_bench.py charges --redis URL`` measures charges per second through
one process's ``Ledger`` API with many concurrent charges, batched per event-loop tick as
in the gateway. It then runs ``redis-benchmark`` on the same ``charge`` script with the
same keys and arguments, so the two rates compare the Python path with the server's limit.
The redis-benchmark call is the one ``Ledger.charge`` sent, read with MONITOR. Every call
gets a fresh charge id, so no call is a cheap replay (redis-benchmark draws ids from 2e9
values, so about 10 of its 200,000 calls repeat an id).

``python bench/ledger_bench.py memory --redis URL`` creates N pools with one grant each
through the Ledger API and reports Redis ``used_memory`` per pool, then per pool after one
charge each (usage counters and the charge record).
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import io
import json
import shutil
import subprocess
import time
import uuid
from typing import Any
from urllib.parse import urlsplit

import uvloop

from gatekeeper.ledger import ChargeRequest, Ledger, connect_redis
from gatekeeper.log import configure_logging

TENANT = "ledgerbench"
ROUTE = "bench"
TICKETS = 10**13
CHARGE_TTL_S = 600
# redis-benchmark replaces __rand_int__ with a number below this.
RANDOM_ID_RANGE = 2_000_000_000


def charge_request(tenant: str = TENANT) -> ChargeRequest:
    return ChargeRequest(tenant=tenant, pools=(tenant,), cost=1, route=ROUTE,
                         charge_id=uuid.uuid4().hex)


async def ledger_rate(ledger: Ledger, concurrency: int, warmup_s: float,
                      duration_s: float) -> dict[str, Any]:
    """Charge from ``concurrency`` tasks for warm-up plus duration; count the measured part."""
    counts = {"allowed": 0, "refused": 0}
    start = time.perf_counter()
    record_from = start + warmup_s
    end = record_from + duration_s

    async def worker() -> None:
        while (now := time.perf_counter()) < end:
            result = await ledger.charge(charge_request())
            if now >= record_from:
                counts["allowed" if result.allowed else "refused"] += 1

    async def round_trips_at_start() -> int:
        await asyncio.sleep(warmup_s)
        return ledger.round_trips

    trips_at_start = asyncio.create_task(round_trips_at_start())
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    trips_before = await trips_at_start
    elapsed = time.perf_counter() - record_from
    charges = counts["allowed"] + counts["refused"]
    trips = max(1, ledger.round_trips - trips_before)
    return {
        "concurrency": concurrency,
        "duration_s": elapsed,
        "charges": charges,
        "refused": counts["refused"],
        "charges_per_s": charges / elapsed,
        "mean_batch": charges / trips,
    }


async def capture_charge_call(ledger: Ledger) -> list[str]:
    """Return the arguments of ``EVALSHA`` that one ``Ledger.charge`` sends, from MONITOR.

    Reading the call off the wire keeps the benchmark in step with the ledger's own
    KEYS and ARGV, whatever ``charge.lua`` expects. The charge id becomes ``__rand_int__``.

    Raises:
        RuntimeError: MONITOR showed no EVALSHA with the charge id within 5 seconds.
    """
    request = charge_request()
    async with ledger.client.monitor() as monitor:
        charged = asyncio.create_task(ledger.charge(request))
        try:
            async with asyncio.timeout(5):
                while True:
                    command = (await monitor.next_command())["command"]
                    if command.lower().startswith("evalsha") and request.charge_id in command:
                        break
        except TimeoutError as exc:
            raise RuntimeError("MONITOR showed no EVALSHA for the ledger's charge") from exc
        finally:
            await charged
    return command.replace(request.charge_id, "__rand_int__").split(" ")[1:]


def redis_benchmark_command(call: list[str], host: str, port: int, clients: int,
                            requests: int) -> list[str] | None:
    """Return the redis-benchmark command that repeats ``call`` (EVALSHA's arguments)."""
    binary = shutil.which("redis-benchmark") or shutil.which("valkey-benchmark")
    if binary is None:
        return None
    return [binary, "-h", host, "-p", str(port), "-c", str(clients), "-n", str(requests),
            "-r", str(RANDOM_ID_RANGE), "--csv", "evalsha", *call]


async def check_script_call(ledger: Ledger, command: list[str]) -> None:
    """Send redis-benchmark's call once by hand and require an allowed charge.

    Raises:
        RuntimeError: the script rejected the call or refused the charge.
    """
    first_key = command.index("evalsha") + 1
    sha, count = command[first_key], int(command[first_key + 1])
    keys = [key.replace("__rand_int__", f"check{uuid.uuid4().hex}")
            for key in command[first_key + 2 : first_key + 2 + count]]
    args = command[first_key + 2 + count:]
    reply = await ledger.client.evalsha(sha, count, *keys, *args)
    if int(reply[1]) != 1:
        raise RuntimeError(f"the charge script did not allow the benchmark's charge; "
                           f"reply {reply!r}; check the keys and arguments against charge.lua")


def run_redis_benchmark(command: list[str]) -> dict[str, Any]:
    done = subprocess.run(command, capture_output=True, text=True, check=False,
                          timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"redis-benchmark failed with code {done.returncode}: {done.stderr}")
    rows = list(csv.DictReader(io.StringIO(done.stdout)))
    if not rows or "rps" not in rows[0]:
        raise RuntimeError(f"redis-benchmark printed no CSV row with rps:\n{done.stdout}")
    row = rows[-1]
    return {
        "clients": int(command[command.index("-c") + 1]),
        "requests": int(command[command.index("-n") + 1]),
        "calls_per_s": float(row["rps"]),
        "p50_ms": float(row.get("p50_latency_ms") or "nan"),
        "p99_ms": float(row.get("p99_latency_ms") or "nan"),
    }


async def charges(args: argparse.Namespace) -> dict[str, Any]:
    client = await connect_redis(args.redis, timeout_ms=2000, max_connections=64)
    ledger = Ledger(client, key_prefix="benchledger", charge_ttl_s=CHARGE_TTL_S)
    try:
        await ledger.grant(TENANT, TICKETS, expires_at=None, note="bench", actor="bench",
                           idempotency_key=f"bench-{uuid.uuid4().hex}")
        result: dict[str, Any] = {
            "ledger": await ledger_rate(ledger, args.concurrency, args.warmup, args.duration)
        }
        address = urlsplit(args.redis)
        call = await capture_charge_call(ledger)
        command = redis_benchmark_command(call, address.hostname or "127.0.0.1",
                                          address.port or 6379, args.clients, args.requests)
        if command is None:
            result["redis_benchmark_error"] = "redis-benchmark is not installed"
            return result
        await check_script_call(ledger, command)
        result["redis_benchmark"] = run_redis_benchmark(command)
        result["redis_benchmark"]["evalsha_arguments"] = call
        result["redis_benchmark"]["command"] = " ".join(
            ["redis-benchmark", *command[1:command.index("evalsha") + 3], "..."]
        )
        return result
    finally:
        await ledger.close()


async def used_memory(ledger: Ledger) -> int:
    info = await ledger.client.info("memory")
    return int(info["used_memory"])


async def memory(args: argparse.Namespace) -> dict[str, Any]:
    client = await connect_redis(args.redis, timeout_ms=2000, max_connections=64)
    ledger = Ledger(client, key_prefix="benchmem")
    pools = [f"mem{index:06d}" for index in range(args.pools)]
    limit = asyncio.Semaphore(64)

    async def create(pool: str) -> None:
        async with limit:
            await ledger.grant(pool, 1000, expires_at=None, note="bench", actor="bench",
                               idempotency_key=f"create-{pool}")

    async def charge_once(pool: str) -> None:
        async with limit:
            await ledger.charge(charge_request(pool))

    try:
        # Register the scripts first, so the script cache is not counted per pool.
        await ledger.get_pool("warmup")
        before = await used_memory(ledger)
        await asyncio.gather(*(create(pool) for pool in pools))
        granted = await used_memory(ledger)
        await asyncio.gather(*(charge_once(pool) for pool in pools))
        charged = await used_memory(ledger)
        by_key = await memory_by_key(ledger, pools[0])
    finally:
        await ledger.close()
    return {
        "pools": args.pools,
        "bytes_per_pool_with_grant": (granted - before) / args.pools,
        "bytes_per_pool_after_one_charge": (charged - before) / args.pools,
        "used_memory_before": before,
        "used_memory_after": charged,
        "one_pool_bytes_by_key": by_key,
    }


async def memory_by_key(ledger: Ledger, tenant: str) -> dict[str, int]:
    """Return MEMORY USAGE of each key of one tenant, by the key's kind (``pool``, ``audit``...).

    Charge records share the kind ``charge``; the other kinds have one key each.
    """
    usage: dict[str, int] = {}
    pattern = ledger.keys.pools(tenant).rsplit(":", 1)[0] + ":*"
    async for key in ledger.client.scan_iter(match=pattern):
        kind = key.split(":")[2]
        usage[kind] = usage.get(kind, 0) + int(await ledger.client.memory_usage(key, samples=0))
    return dict(sorted(usage.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    rate = commands.add_parser("charges", help="Ledger charges per second vs redis-benchmark")
    rate.add_argument("--redis", required=True, help="redis://127.0.0.1:PORT/0")
    rate.add_argument("--concurrency", type=int, default=256, help="concurrent charge tasks")
    rate.add_argument("--duration", type=float, default=10.0, help="seconds measured")
    rate.add_argument("--warmup", type=float, default=2.0, help="seconds not measured")
    rate.add_argument("--clients", type=int, default=32, help="redis-benchmark -c")
    rate.add_argument("--requests", type=int, default=200_000, help="redis-benchmark -n")
    pools = commands.add_parser("memory", help="Redis memory per pool")
    pools.add_argument("--redis", required=True, help="redis://127.0.0.1:PORT/0")
    pools.add_argument("--pools", type=int, default=2000, help="pools to create")
    args = parser.parse_args()
    # Warnings and errors only, on stderr: stdout carries the JSON result.
    configure_logging(level="warning", fmt="json")
    runner = charges if args.command == "charges" else memory
    print(json.dumps(uvloop.run(runner(args))))


if __name__ == "__main__":
    main()

"""Ledger fixtures on two backends: the session's single server and a real 3-master cluster.

The cluster starts once per session from the same server binary, with ``valkey-cli --cluster
create`` from the same folder. ``ledger`` and ``ledger_store`` run each test on both
backends. ``expire_grant`` moves a grant's expiry into the past, so tests never wait for the
clock.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
import redis

from gatekeeper.embedded import EmbeddedRedis, find_server_binary
from gatekeeper.ledger import Ledger, connect_redis
from gatekeeper.ledger.keys import KeyBuilder

CLUSTER_NODES = 3
MAX_CLUSTER_WAIT_S = 30.0


def _cluster_ok(node: EmbeddedRedis) -> bool:
    client = redis.Redis(host=node.host, port=node.port, decode_responses=True)
    try:
        return "cluster_state:ok" in str(client.execute_command("CLUSTER", "INFO"))
    finally:
        client.close()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[EmbeddedRedis]]:
    """Three masters covering every slot, no replicas."""
    base = tmp_path_factory.mktemp("cluster")
    cluster_args = ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                    "--cluster-node-timeout", "5000"]
    nodes = [EmbeddedRedis(base / f"node{i}", appendonly=False, extra_args=cluster_args)
             for i in range(CLUSTER_NODES)]
    try:
        for node in nodes:
            node.start()
        cli = Path(find_server_binary()).with_name("valkey-cli")
        addresses = [f"{node.host}:{node.port}" for node in nodes]
        subprocess.run([str(cli), "--cluster", "create", *addresses, "--cluster-replicas", "0",
                        "--cluster-yes"], check=True, capture_output=True, timeout=60)
        deadline = time.monotonic() + MAX_CLUSTER_WAIT_S
        while not all(_cluster_ok(node) for node in nodes):
            if time.monotonic() > deadline:
                raise RuntimeError(f"cluster at {addresses} not ready in {MAX_CLUSTER_WAIT_S} s")
            time.sleep(0.05)
        yield nodes
    finally:
        for node in nodes:
            node.stop()


@pytest.fixture(params=["single", pytest.param("cluster", marks=pytest.mark.cluster)])
def ledger_url(request: pytest.FixtureRequest) -> str:
    """URL of an emptied backend: the session server, or the session cluster."""
    if request.param == "single":
        return str(request.getfixturevalue("redis_url"))
    nodes: list[EmbeddedRedis] = request.getfixturevalue("redis_cluster")
    for node in nodes:
        client = redis.Redis(host=node.host, port=node.port)
        client.flushall()
        client.close()
    return f"redis+cluster://{nodes[0].host}:{nodes[0].port}"


@pytest.fixture
def ledger_store(ledger_url: str) -> Iterator[redis.Redis | redis.RedisCluster]:
    """A synchronous client on the test's backend, for checks and tampering."""
    client: redis.Redis | redis.RedisCluster
    if ledger_url.startswith("redis+cluster://"):
        host, port = ledger_url.removeprefix("redis+cluster://").split(":")
        client = redis.RedisCluster(host=host, port=int(port), decode_responses=True)
    else:
        client = redis.Redis.from_url(ledger_url, decode_responses=True)
    yield client
    client.close()


@pytest.fixture
async def ledger(ledger_url: str) -> AsyncIterator[Ledger]:
    """A ledger on the emptied backend."""
    client = await connect_redis(ledger_url, timeout_ms=2000, max_connections=16)
    ledger = Ledger(client, charge_ttl_s=600)
    yield ledger
    await ledger.close()


@pytest.fixture
def expire_grant(ledger_store: redis.Redis) -> Callable[[str, str], None]:
    """Make a grant expire as if its time had come: ``expire_grant(pool, grant_id)``."""
    keys = KeyBuilder("gk")

    def expire(pool: str, grant_id: str) -> None:
        pool_keys = keys.pool(pool)
        past_ms = 1_000
        if ledger_store.zscore(pool_keys.grants, grant_id) is None:
            raise LookupError(f"grant {grant_id} of pool {pool} is not live")
        ledger_store.zadd(pool_keys.grants, {grant_id: past_ms})
        ledger_store.hset(pool_keys.grant_fields, f"{grant_id}:expires_at", past_ms)

    return expire

"""Ledger fixtures: a ``Ledger`` on the session server, and helpers that move a grant's
expiry into the past so tests never wait for the clock."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import pytest
import redis

from gatekeeper.ledger import Ledger, connect_redis
from gatekeeper.ledger.keys import KeyBuilder


@pytest.fixture
async def ledger(redis_url: str) -> AsyncIterator[Ledger]:
    """A ledger on the emptied session server."""
    client = await connect_redis(redis_url, timeout_ms=2000, max_connections=16)
    ledger = Ledger(client, charge_ttl_s=600)
    yield ledger
    await ledger.close()


@pytest.fixture
def expire_grant(redis_sync: redis.Redis) -> Callable[[str, str], None]:
    """Make a grant expire as if its time had come: ``expire_grant(pool, grant_id)``."""
    keys = KeyBuilder("gk")

    def expire(pool: str, grant_id: str) -> None:
        pool_keys = keys.pool(pool)
        past_ms = 1_000
        if redis_sync.zscore(pool_keys.grants, grant_id) is None:
            raise LookupError(f"grant {grant_id} of pool {pool} is not live")
        redis_sync.zadd(pool_keys.grants, {grant_id: past_ms})
        redis_sync.hset(pool_keys.grant_fields, f"{grant_id}:expires_at", past_ms)

    return expire

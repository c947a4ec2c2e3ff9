"""Session fixtures: a real Redis-compatible server on a random port in a private directory.

The server comes from the same binary the gateway embeds. Nothing here touches a Redis the
machine may already run on the default port; a missing binary fails the tests, never skips them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import aiohttp
import pytest
import redis

from gatekeeper.embedded import EmbeddedRedis


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    """One server for the whole session; tests share it and flush it in ``redis_url``."""
    server = EmbeddedRedis(tmp_path_factory.mktemp("redis"), appendonly=False)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: EmbeddedRedis) -> str:
    """URL of the session server, emptied of keys before the test."""
    client = redis.Redis(host=redis_server.host, port=redis_server.port)
    client.flushall()
    client.close()
    return redis_server.url


@pytest.fixture
def redis_sync(redis_url: str) -> Iterator[redis.Redis]:
    """A synchronous client for the test's own checks on the session server."""
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    client.close()


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[Callable[..., EmbeddedRedis]]:
    """Factory for servers a test may stop, kill or restart; all are stopped afterwards."""
    started: list[EmbeddedRedis] = []

    def start(**options: object) -> EmbeddedRedis:
        server = EmbeddedRedis(tmp_path / f"redis-{len(started)}", **options)  # type: ignore[arg-type]
        server.start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    """An HTTP client session for the test, closed afterwards."""
    async with aiohttp.ClientSession() as client:
        yield client

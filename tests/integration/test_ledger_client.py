"""The ledger's Redis client: connecting, error kinds, the connection limit and PING logging."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import redis
from redis.asyncio import Redis, RedisCluster
from structlog.testing import capture_logs

from gatekeeper.embedded import EmbeddedRedis, free_port
from gatekeeper.errors import LedgerUnavailable
from gatekeeper.ledger import ChargeRequest, Ledger, connect_redis
from tests.support import TcpProxy, wait_until_async


def charge(charge_id: str = "c1") -> ChargeRequest:
    return ChargeRequest("acme", ("acme",), 1, "chat", charge_id)


class RejectingServer:
    """A RESP server that replies to every command with an error and counts open connections."""

    def __init__(self) -> None:
        self.open = 0
        self.accepted = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        return f"redis://127.0.0.1:{port}/0"

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.open += 1
        self.accepted += 1
        with contextlib.suppress(ConnectionError, OSError, asyncio.IncompleteReadError):
            while await self._read_command(reader):
                writer.write(b"-ERR this test server rejects every command\r\n")
                await writer.drain()
        self.open -= 1
        writer.close()

    @staticmethod
    async def _read_command(reader: asyncio.StreamReader) -> bool:
        """Read one command (an array of bulk strings); False at the end of the stream."""
        header = await reader.readline()
        if not header:
            return False
        for _ in range(int(header[1:])):
            length = int((await reader.readline())[1:])
            await reader.readexactly(length + 2)
        return True

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()


@pytest.fixture
async def rejecting_server() -> AsyncIterator[RejectingServer]:
    server = RejectingServer()
    yield server
    await server.stop()


@contextlib.asynccontextmanager
async def every_connection_in_use(ledger: Ledger) -> AsyncIterator[None]:
    """Hold the ledger's only connection (single server) or its only call slot (cluster)."""
    if isinstance(ledger.client, RedisCluster):
        async with ledger.limit:
            yield
        return
    pool = ledger.client.connection_pool
    connection = await pool.get_connection()
    try:
        yield
    finally:
        await pool.release(connection)


async def test_failed_ping_closes_client(rejecting_server: RejectingServer,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    url = await rejecting_server.start()
    closed: list[Redis] = []
    close = Redis.aclose

    async def counting_close(client: Redis, *args: Any, **kwargs: Any) -> None:
        closed.append(client)
        await close(client, *args, **kwargs)

    monkeypatch.setattr(Redis, "aclose", counting_close)
    errors = []
    for _attempt in range(3):
        with pytest.raises(LedgerUnavailable) as caught:
            await connect_redis(url, timeout_ms=500, max_connections=2)
        errors.append(caught.value)

    async def all_closed() -> bool:
        return rejecting_server.open == 0

    await wait_until_async(all_closed, what="the failed clients' connections to close",
                           timeout_s=2.0)
    assert len(closed) == 3
    assert rejecting_server.accepted == 3
    assert [error.may_have_run for error in errors] == [False] * 3


async def test_unreachable_cluster_unavailable() -> None:
    # redis-py raises RedisClusterException, which is no RedisError, when it reaches no node.
    with pytest.raises(LedgerUnavailable) as caught:
        await connect_redis(f"redis+cluster://127.0.0.1:{free_port()}", timeout_ms=100,
                            max_connections=2)
    assert caught.value.kind == "connection"


async def test_busy_when_connections_in_use(ledger_url: str) -> None:
    client = await connect_redis(ledger_url, timeout_ms=100, max_connections=1)
    ledger = Ledger(client)
    await ledger.grant("acme", 10, expires_at=None, note=None, actor="t", idempotency_key="g")
    try:
        async with every_connection_in_use(ledger):
            with pytest.raises(LedgerUnavailable) as charged:
                await asyncio.wait_for(ledger.charge(charge()), 5)
            with pytest.raises(LedgerUnavailable) as read:
                await asyncio.wait_for(ledger.get_pool("acme"), 5)
        found = await ledger.get_pool("acme")
    finally:
        await ledger.close()
    assert charged.value.kind == "busy"
    assert not charged.value.may_have_run
    assert read.value.kind == "busy"
    assert found is not None
    assert found["balance"] == 10


async def test_timeout_may_have_run(private_redis: Callable[..., EmbeddedRedis]) -> None:
    server = private_redis(appendonly=False)
    proxy = TcpProxy(server.host, server.port).start()
    ledger = Ledger(await connect_redis(proxy.url, timeout_ms=200, max_connections=2))
    try:
        await ledger.grant("acme", 10, expires_at=None, note=None, actor="t",
                           idempotency_key="g")
        proxy.blackhole()
        with pytest.raises(LedgerUnavailable) as caught:
            await ledger.charge(charge())
    finally:
        proxy.restore()
        await ledger.close()
        proxy.stop()
    assert caught.value.kind == "timeout"
    assert caught.value.may_have_run


async def test_killed_server_connection_kind(private_redis: Callable[..., EmbeddedRedis]) -> None:
    server = private_redis(appendonly=False)
    ledger = Ledger(await connect_redis(server.url, timeout_ms=500, max_connections=2))
    server.kill()
    try:
        with pytest.raises(LedgerUnavailable) as caught:
            await ledger.charge(charge())
    finally:
        await ledger.close()
    assert caught.value.kind == "connection"
    assert caught.value.may_have_run


async def test_script_error_kind(ledger: Ledger, ledger_store: redis.Redis) -> None:
    await ledger.grant("acme", 10, expires_at=None, note=None, actor="t", idempotency_key="g")
    # The charge script's usage counter write now fails with WRONGTYPE inside the script.
    ledger_store.delete("gk:{acme}:usage")
    ledger_store.set("gk:{acme}:usage", "not a hash")
    with pytest.raises(LedgerUnavailable) as caught:
        await ledger.charge(charge())
    assert caught.value.kind == "script"
    assert caught.value.may_have_run


async def test_out_of_memory_response_kind(private_redis: Callable[..., EmbeddedRedis]) -> None:
    server = private_redis(appendonly=False)
    ledger = Ledger(await connect_redis(server.url, timeout_ms=1000, max_connections=2))
    try:
        await ledger.grant("acme", 10, expires_at=None, note=None, actor="t",
                           idempotency_key="g")
        await ledger.client.config_set("maxmemory", 1)
        with pytest.raises(LedgerUnavailable) as caught:
            await ledger.charge(charge())
        await ledger.client.config_set("maxmemory", 0)
        found = await ledger.get_pool("acme")
    finally:
        await ledger.close()
    assert caught.value.kind == "response"
    assert not caught.value.may_have_run
    assert found is not None
    assert found["balance"] == 10


async def test_ping_logs_changes_only(private_redis: Callable[..., EmbeddedRedis]) -> None:
    server = private_redis(appendonly=False)
    ledger = Ledger(await connect_redis(server.url, timeout_ms=200, max_connections=2))
    try:
        with capture_logs() as logs:
            assert await ledger.ping()
            server.kill()
            down = [await ledger.ping() for _ in range(5)]
            server.start()
            up = [await ledger.ping() for _ in range(3)]
    finally:
        await ledger.close()
    events: list[Any] = [line["event"] for line in logs]
    assert down == [False] * 5
    assert up == [True] * 3
    assert events.count("ledger_ping_failed") == 1
    assert events.count("ledger_ping_recovered") == 1
    assert "ledger_call_failed" not in events

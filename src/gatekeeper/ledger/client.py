"""Redis connections for the ledger, and the one place where Redis errors are wrapped.

Clients have automatic retries off: a retried script call could charge twice when the first
reply was lost, so the ledger decides about retries itself (charges carry ids for that).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from typing import Any, TypeAlias
from urllib.parse import urlsplit, urlunsplit

import structlog
from redis.asyncio import BlockingConnectionPool, Redis, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from gatekeeper.errors import LedgerUnavailable

log = structlog.get_logger("gatekeeper.ledger.client")

RedisClient: TypeAlias = "Redis | RedisCluster"

# Errors that mean a Redis call failed, timed out or was rejected.
REDIS_ERRORS = (RedisError, OSError, asyncio.TimeoutError)

CLUSTER_SCHEME = "redis+cluster://"


def mask_url(url: str) -> str:
    """Return ``url`` with its password replaced by ``***``, for logs and messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def _no_retries() -> Retry:
    return Retry(NoBackoff(), 0)


async def connect_redis(url: str, *, timeout_ms: int, max_connections: int) -> RedisClient:
    """Create a Redis client for the ledger and check that PING succeeds.

    ``redis://``, ``rediss://`` and ``unix://`` URLs get a ``BlockingConnectionPool``: a call
    that finds every connection busy waits up to ``timeout_ms`` for one. ``redis+cluster://``
    gets a ``RedisCluster`` with ``max_connections`` per node; when they are all busy a call
    fails at once with ``LedgerUnavailable`` instead of waiting.

    Args:
        url: Redis URL; ``redis+cluster://host:port`` names any node of a cluster.
        timeout_ms: socket connect and read timeout, and the maximum wait for a free
            connection, in milliseconds.
        max_connections: connections per process (per node for a cluster).

    Returns:
        A client that decodes replies to ``str`` and never retries on its own.

    Raises:
        LedgerUnavailable: when the server does not answer PING.
    """
    timeout_s = timeout_ms / 1000
    options: dict[str, Any] = {
        "socket_timeout": timeout_s,
        "socket_connect_timeout": timeout_s,
        "decode_responses": True,
        "retry": _no_retries(),
    }
    client: RedisClient
    if url.startswith(CLUSTER_SCHEME):
        node_url = "redis://" + url.removeprefix(CLUSTER_SCHEME)
        client = RedisCluster.from_url(node_url, max_connections=max_connections, **options)
    else:
        pool = BlockingConnectionPool.from_url(
            url, max_connections=max_connections, timeout=timeout_s, **options
        )
        client = Redis(connection_pool=pool, retry=_no_retries())
    with wrap_redis_errors("connect", url=mask_url(url)):
        await client.ping()
    log.info("ledger_redis_connected", url=mask_url(url), cluster=isinstance(client, RedisCluster))
    return client


def call_limit(client: RedisClient) -> contextlib.AbstractAsyncContextManager[Any]:
    """Return a context, shared by one ledger's calls, that queues calls beyond the limit.

    A ``BlockingConnectionPool`` queues by itself. redis-py's asyncio ``RedisCluster`` raises
    ``MaxConnectionsError`` instead, so cluster calls wait on a semaphore sized to
    ``max_connections``. Each call or batch needs at most one connection per node.
    """
    if isinstance(client, RedisCluster):
        limit = int(client.nodes_manager.connection_kwargs.get("max_connections") or 1)
        return asyncio.Semaphore(limit)
    return contextlib.nullcontext()


@contextlib.contextmanager
def wrap_redis_errors(operation: str, **ids: object) -> Iterator[None]:
    """Turn a Redis client error into ``LedgerUnavailable``, chained, and log it once.

    Args:
        operation: what was being done, such as ``charge`` or ``grant``.
        ids: identifiers to log with the error (tenant, pool, charge id).

    Raises:
        LedgerUnavailable: for any error in ``REDIS_ERRORS`` raised inside the block.
    """
    try:
        yield
    except REDIS_ERRORS as error:
        log.warning("ledger_call_failed", operation=operation, error=str(error),
                    error_type=type(error).__name__, **ids)
        raise LedgerUnavailable(f"Redis call for {operation} failed: {error}") from error

"""Redis connections for the ledger, and the one place where Redis errors are wrapped.

Clients have automatic retries off: a retried script call could charge twice when the first
reply was lost, so the ledger decides about retries itself (charges carry ids for that).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator, Mapping
from typing import Any, TypeAlias
from urllib.parse import urlsplit, urlunsplit

import structlog
from redis.asyncio import BlockingConnectionPool, Redis, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import (
    ClusterDownError,
    MaxConnectionsError,
    NoScriptError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisClusterException,
    RedisError,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gatekeeper.errors import LedgerErrorKind, LedgerUnavailable

log = structlog.get_logger("gatekeeper.ledger.client")

RedisClient: TypeAlias = "Redis | RedisCluster"

# Errors that mean a Redis call failed, timed out or was rejected. redis-py's cluster client
# raises RedisClusterException, which is no RedisError, when it reaches no node at all.
REDIS_ERRORS = (RedisError, RedisClusterException, OSError, asyncio.TimeoutError)
# Error replies that reject a command before it runs, for a state of the server that passes:
# a failover, a full memory, a script that runs too long. NOSCRIPT reaches callers only when
# the scripts were flushed again after every reload. redis-py has no class for BUSY, and
# raises LOADING as BusyLoadingError, a ConnectionError.
REJECTED_REPLIES = (ReadOnlyError, OutOfMemoryError, ClusterDownError, TryAgainError)
REJECTED_PREFIXES = ("BUSY ",)
# redis-py 8.2's BlockingConnectionPool raises ConnectionError with this text when no
# connection became free within its timeout.
POOL_EXHAUSTED = "No connection available"

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
    gets a ``RedisCluster`` with ``max_connections`` per node; ``call_limit`` makes ledger
    calls wait up to ``timeout_ms`` for one of them.

    Args:
        url: Redis URL; ``redis+cluster://host:port`` names any node of a cluster.
        timeout_ms: socket connect and read timeout, and the maximum wait for a free
            connection, in milliseconds.
        max_connections: connections per process (per node for a cluster).

    Returns:
        A client that decodes replies to ``str`` and never retries on its own.

    Raises:
        LedgerUnavailable: when PING fails; the client is closed then.
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
    try:
        with wrap_redis_errors("connect", url=mask_url(url)):
            await client.ping()
    except LedgerUnavailable:
        # Callers retry in a loop; each failed attempt must release its sockets.
        await client.aclose()
        raise
    log.info("ledger_redis_connected", url=mask_url(url), cluster=isinstance(client, RedisCluster))
    return client


def call_limit(client: RedisClient) -> contextlib.AbstractAsyncContextManager[Any]:
    """Return a context, shared by one ledger's calls, that queues calls beyond the limit.

    A ``BlockingConnectionPool`` queues by itself. redis-py's asyncio ``RedisCluster`` raises
    ``MaxConnectionsError`` instead, so cluster calls wait on a semaphore sized to
    ``max_connections``, for at most the client's socket timeout (``redis.timeout_ms``), as
    the pool does. Each call or batch needs at most one connection per node.
    """
    if isinstance(client, RedisCluster):
        settings = client.nodes_manager.connection_kwargs
        limit = int(settings.get("max_connections") or 1)
        return ClusterCallLimit(limit, float(settings.get("socket_timeout") or 1.0))
    return contextlib.nullcontext()


class ClusterCallLimit:
    """A semaphore whose wait ends with ``LedgerUnavailable`` (kind ``busy``) after ``wait_s``.

    Args:
        size: calls that may run at once.
        wait_s: the maximum wait for a free place, in seconds.
    """

    def __init__(self, size: int, wait_s: float) -> None:
        self._semaphore = asyncio.Semaphore(size)
        self.wait_s = wait_s

    async def __aenter__(self) -> None:
        try:
            async with asyncio.timeout(self.wait_s):
                await self._semaphore.acquire()
        except TimeoutError:
            raise LedgerUnavailable(
                f"no Redis connection became free within {self.wait_s} s",
                kind="busy", may_have_run=False) from None

    async def __aexit__(self, *exc_info: object) -> None:
        self._semaphore.release()


def classify(error: BaseException, *, script: bool = False) -> tuple[LedgerErrorKind, bool]:
    """Return the ``LedgerUnavailable`` kind of a client error and whether the call may have run.

    Args:
        error: an error from ``REDIS_ERRORS``.
        script: the call was a script call, which an error can stop after some writes.
    """
    if isinstance(error, RedisTimeoutError | asyncio.TimeoutError):
        return "timeout", True
    if isinstance(error, MaxConnectionsError) or (
            isinstance(error, RedisConnectionError) and str(error).startswith(POOL_EXHAUSTED)):
        return "busy", False
    if isinstance(error, ResponseError):
        if (isinstance(error, (NoScriptError, *REJECTED_REPLIES))
                or str(error).startswith(REJECTED_PREFIXES)):
            return "response", False
        # The call failed on its own input, so sending it again fails again.
        return "script", script
    # A broken connection may have carried the command before it broke.
    return "connection", True


def unavailable(operation: str, error: BaseException, ids: Mapping[str, object], *,
                script: bool = False) -> LedgerUnavailable:
    """Log a failed Redis call with ``ids`` and return the ``LedgerUnavailable`` to raise."""
    kind, may_have_run = classify(error, script=script)
    log.warning("ledger_call_failed", operation=operation, kind=kind, error=str(error),
                error_type=type(error).__name__, **ids)
    failure = LedgerUnavailable(f"Redis call for {operation} failed: {error}", kind=kind,
                                may_have_run=may_have_run)
    failure.__cause__ = error
    return failure


@contextlib.contextmanager
def wrap_redis_errors(operation: str, *, quiet: bool = False, **ids: object) -> Iterator[None]:
    """Turn a Redis client error into ``LedgerUnavailable``, chained, and log it once.

    Args:
        operation: what was being done, such as ``read_usage`` or ``ping``.
        quiet: log nothing, for callers that log state changes themselves.
        ids: identifiers to log with the error (tenant, pool, charge id).

    Raises:
        LedgerUnavailable: for any error in ``REDIS_ERRORS`` raised inside the block.
    """
    try:
        yield
    except REDIS_ERRORS as error:
        if quiet:
            kind, may_have_run = classify(error)
            raise LedgerUnavailable(f"Redis call for {operation} failed: {error}", kind=kind,
                                    may_have_run=may_have_run) from error
        raise unavailable(operation, error, ids) from error


@contextlib.contextmanager
def wrap_script_errors(operation: str, **ids: object) -> Iterator[None]:
    """Like ``wrap_redis_errors``, for a block that calls a ledger script.

    An error reply is then the script's own failure (kind ``script``, see ``classify``).
    """
    try:
        yield
    except REDIS_ERRORS as error:
        raise unavailable(operation, error, ids, script=True) from error

"""Idempotency keys for admin money movements, after the IETF Idempotency-Key draft.

A key is scoped to the tenant and kept 24 hours. The first request claims it with a short
lease. A repeat with the same JSON body gets the first status and body again, one with
another body gets 422, and one that arrives while the first is still running gets 409.
Only successful responses are stored: after an error the claim is released, so a retry
runs again. The money movement itself is exactly-once on its own (its script records the
key), so a lease that runs out never lets a movement happen twice.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import structlog
from aiohttp import web

from gatekeeper.admin.context import IDEMPOTENCY
from gatekeeper.admin.requests import idempotency_key
from gatekeeper.errors import Conflict, Unprocessable
from gatekeeper.ledger import Ledger
from gatekeeper.ledger.client import wrap_redis_errors

log = structlog.get_logger("gatekeeper.admin.idempotency")

KEEP_S = 24 * 3600
# How long a claim blocks duplicates while its request runs; a crashed request frees the
# key after this.
LEASE_S = 60
MAX_CLAIM_ATTEMPTS = 3


def fingerprint(method: str, path: str, body: Any) -> str:
    """Return a hash of the request target and its JSON body, ignoring key order and spacing."""
    canonical = json.dumps([method, path, body], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


@dataclass(frozen=True, slots=True)
class StoredResponse:
    """The first response sent for a key."""

    status: int
    body: Any


class IdempotencyKeys:
    """Claims and stores idempotency keys in Redis, through the ledger's client.

    Args:
        ledger: the ledger whose client and key builder to use.
    """

    def __init__(self, ledger: Ledger) -> None:
        self._client = ledger.client
        self._keys = ledger.keys
        self._limit = ledger.limit

    async def claim(self, tenant: str, key: str, request_hash: str) -> StoredResponse | None:
        """Claim ``key`` for a request, or return the response stored for it.

        Returns:
            None when this request has claimed the key and should run.

        Raises:
            Conflict: a request with this key is still running.
            Unprocessable: the key was used with another request body.
            LedgerUnavailable: when Redis fails.
        """
        name = self._keys.idempotency(tenant, key)
        claim = json.dumps({"state": "running", "fingerprint": request_hash})
        for _attempt in range(MAX_CLAIM_ATTEMPTS):
            async with self._limit:
                with wrap_redis_errors("claim_idempotency_key", tenant=tenant, key=key):
                    if await self._client.set(name, claim, nx=True, ex=LEASE_S):
                        return None
                    raw = await self._client.get(name)
            if raw is None:
                continue  # The record expired between SET and GET; claim again.
            return self._stored(json.loads(raw), request_hash, key)
        raise Conflict(f"Idempotency key {key!r} is changing hands; retry the request.")

    @staticmethod
    def _stored(record: dict[str, Any], request_hash: str, key: str) -> StoredResponse:
        if record.get("fingerprint") != request_hash:
            raise Unprocessable(
                f"Idempotency key {key!r} was used with another request; use a new key."
            )
        if record.get("state") != "done":
            raise Conflict(f"A request with idempotency key {key!r} is still running; retry "
                           "after it finishes.")
        return StoredResponse(status=int(record["status"]), body=record["body"])

    async def store(self, tenant: str, key: str, request_hash: str,
                    response: StoredResponse) -> None:
        """Store the response of the request that claimed ``key``, for 24 hours."""
        record = json.dumps({"state": "done", "fingerprint": request_hash,
                             "status": response.status, "body": response.body})
        async with self._limit:
            with wrap_redis_errors("store_idempotency_key", tenant=tenant, key=key):
                await self._client.set(self._keys.idempotency(tenant, key), record,
                                       ex=KEEP_S)

    async def release(self, tenant: str, key: str) -> None:
        """Drop the claim of a request that failed, so that a retry can run."""
        async with self._limit:
            with wrap_redis_errors("release_idempotency_key", tenant=tenant, key=key):
                await self._client.delete(self._keys.idempotency(tenant, key))


Operation = Callable[[], Awaitable[StoredResponse]]


async def run_idempotent(request: web.Request, tenant: str, body: Any,
                         operation: Operation) -> web.Response:
    """Run ``operation`` once per idempotency key and return its stored response.

    Args:
        request: the admin request, with its ``Idempotency-Key`` header.
        tenant: scope of the key.
        body: the parsed JSON body, part of the request's fingerprint.
        operation: the money movement; returns the response to store.
    """
    key = idempotency_key(request)
    keys = request.app[IDEMPOTENCY]
    request_hash = fingerprint(request.method, request.path, body)
    stored = await keys.claim(tenant, key, request_hash)
    if stored is not None:
        log.info("admin_idempotent_replay", tenant=tenant, key=key, status=stored.status)
        return web.json_response(stored.body, status=stored.status,
                                 headers={"Idempotent-Replayed": "true"})
    try:
        response = await operation()
    except Exception:
        # Any failure frees the key for a retry. The money movement still runs at most once
        # per key, because the grant and transfer scripts record the key themselves.
        await keys.release(tenant, key)
        raise
    await keys.store(tenant, key, request_hash, response)
    return web.json_response(response.body, status=response.status)

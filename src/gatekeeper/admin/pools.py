"""Pool handlers: read a pool, grant tickets to it.

``POST /admin/v1/pools/{pool}/grants`` creates the pool and is idempotent per
``Idempotency-Key``; ``GET /admin/v1/pools/{pool}`` returns the pool object.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from aiohttp import web

from gatekeeper.admin.context import ACTOR, IDEMPOTENCY
from gatekeeper.admin.idempotency import StoredResponse, fingerprint
from gatekeeper.admin.requests import idempotency_key, pool_from_path, read_json
from gatekeeper.admin.schemas import GrantBody, parse_body
from gatekeeper.appkeys import LEDGER
from gatekeeper.errors import BadRequest, GatekeeperError, LedgerUnavailable, NotFound
from gatekeeper.ledger import GrantExpired
from gatekeeper.ledger.keys import tenant_of

log = structlog.get_logger("gatekeeper.admin.pools")

Operation = Callable[[], Awaitable[StoredResponse]]


async def get_pool(request: web.Request) -> web.Response:
    pool = pool_from_path(request)
    found = await request.app[LEDGER].get_pool(pool)
    if found is None:
        raise NotFound(f"Pool {pool!r} does not exist; grant tickets to create it.", pool=pool)
    return web.json_response(found)


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
    except (GatekeeperError, LedgerUnavailable):
        await keys.release(tenant, key)
        raise
    await keys.store(tenant, key, request_hash, response)
    return web.json_response(response.body, status=response.status)


async def post_grant(request: web.Request) -> web.Response:
    pool = pool_from_path(request)
    idempotency_key(request)
    raw = await read_json(request)
    body = parse_body(GrantBody, raw)
    ledger = request.app[LEDGER]

    async def grant() -> StoredResponse:
        try:
            result = await ledger.grant(pool, body.tickets, expires_at=body.expires_at,
                                        note=body.note, actor=request[ACTOR],
                                        idempotency_key=idempotency_key(request))
        except GrantExpired as error:
            raise BadRequest(f"Invalid field 'expires_at': {error}; use a future time.",
                             pool=pool) from None
        found = await ledger.get_pool(pool)
        return StoredResponse(status=201, body={"grant": result.grant, "pool": found})

    return await run_idempotent(request, tenant_of(pool), raw, grant)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/admin/v1/pools/{pool}", get_pool)
    app.router.add_post("/admin/v1/pools/{pool}/grants", post_grant)

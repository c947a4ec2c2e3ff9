"""Pool handlers: read a pool, change its settings, grant tickets to it.

``POST /admin/v1/pools/{pool}/grants`` creates the pool and is idempotent per
``Idempotency-Key``; ``PUT /admin/v1/pools/{pool}`` sets any subset of the settings and
creates the pool too; ``GET /admin/v1/pools/{pool}`` returns the pool object.
"""

from __future__ import annotations

import json

import structlog
from aiohttp import web

from gatekeeper.admin.context import ACTOR
from gatekeeper.admin.idempotency import StoredResponse, run_idempotent
from gatekeeper.admin.requests import idempotency_key, pool_from_path, pool_id, read_json
from gatekeeper.admin.schemas import GrantBody, PoolSettingsBody, parse_body
from gatekeeper.appkeys import LEDGER
from gatekeeper.errors import BadRequest, NotFound, Unprocessable
from gatekeeper.ledger import GrantExpired, IdempotencyKeyReused, PoolFull
from gatekeeper.ledger.keys import split_pool, tenant_of

log = structlog.get_logger("gatekeeper.admin.pools")

async def get_pool(request: web.Request) -> web.Response:
    pool = pool_from_path(request)
    found = await request.app[LEDGER].get_pool(pool)
    if found is None:
        raise NotFound(f"Pool {pool!r} does not exist; grant tickets to create it.", pool=pool)
    return web.json_response(found)


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
        except IdempotencyKeyReused:
            raise Unprocessable(f"Idempotency key {idempotency_key(request)!r} was used for "
                                "another grant or transfer of this tenant; use a new key.",
                                pool=pool) from None
        except PoolFull as error:
            raise Unprocessable(f"Pool {pool!r} has {error.balance} tickets, and {body.tickets} "
                                "more would pass the maximum balance of 2^53-1; nothing was "
                                "granted.", pool=pool, balance=error.balance) from None
        found = await ledger.get_pool(pool)
        return StoredResponse(status=201, body={"grant": result.grant, "pool": found})

    return await run_idempotent(request, tenant_of(pool), raw, grant)


def _parent_setting(pool: str, parent: str | None) -> str:
    """Return the stored parent for a requested one; a team pool's parent is its tenant."""
    if parent is None:
        return ""
    pool_id(parent)
    tenant, team = split_pool(pool)
    if split_pool(parent)[0] != tenant:
        raise Unprocessable(f"Parent {parent!r} belongs to another tenant than pool {pool!r}.",
                            pool=pool)
    if team is None:
        raise BadRequest(f"Tenant pool {pool!r} cannot have a parent; only team pools can.",
                         pool=pool)
    if parent != tenant:
        raise BadRequest(f"The parent of team pool {pool!r} must be its tenant pool "
                         f"{tenant!r}, not {parent!r}.", pool=pool)
    return parent


def settings_fields(pool: str, body: PoolSettingsBody) -> dict[str, str]:
    """Translate the settings given in ``body`` into pool hash fields.

    Raises:
        BadRequest: for settings that need a parent on a tenant pool.
        Unprocessable: for a parent of another tenant.
    """
    given = body.model_fields_set
    fields: dict[str, str] = {}
    if "parent" in given:
        fields["parent"] = _parent_setting(pool, body.parent)
    is_tenant_pool = split_pool(pool)[1] is None
    if is_tenant_pool and (body.borrow or body.auto_refill is not None):
        raise BadRequest(f"Tenant pool {pool!r} has no parent, so borrow and auto_refill "
                         "do not apply; set them on a team pool.", pool=pool)
    if "borrow" in given:
        fields["borrow"] = "1" if body.borrow else "0"
    if "auto_refill" in given:
        refill = body.auto_refill
        fields["refill_below"] = "" if refill is None else str(refill.below)
        fields["refill_amount"] = "" if refill is None else str(refill.amount)
    for name in ("reserve", "overdraft", "low_balance"):
        if name in given:
            value = getattr(body, name)
            fields[name] = "" if value is None else str(value)
    return fields


async def put_pool(request: web.Request) -> web.Response:
    pool = pool_from_path(request)
    raw = await read_json(request)
    body = parse_body(PoolSettingsBody, raw)
    fields = settings_fields(pool, body)
    ledger = request.app[LEDGER]
    created = await ledger.configure_pool(pool, fields, actor=request[ACTOR],
                                          change=json.dumps(raw, sort_keys=True))
    found = await ledger.get_pool(pool)
    return web.json_response(found, status=201 if created else 200)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/admin/v1/pools/{pool}", get_pool)
    app.router.add_put("/admin/v1/pools/{pool}", put_pool)
    app.router.add_post("/admin/v1/pools/{pool}/grants", post_grant)

"""``POST /admin/v1/transfers``: move tickets between two pools of one tenant.

Idempotent per ``Idempotency-Key`` (scoped to the tenant of ``from``). A transfer larger
than the source balance gets 409 and moves nothing; pools of two tenants get 422.
"""

from __future__ import annotations

from aiohttp import web

from gatekeeper.admin.context import ACTOR
from gatekeeper.admin.idempotency import StoredResponse, run_idempotent
from gatekeeper.admin.requests import idempotency_key, pool_id, read_json
from gatekeeper.admin.schemas import TransferBody, parse_body
from gatekeeper.appkeys import LEDGER
from gatekeeper.errors import BadRequest, Conflict, NotFound, Unprocessable
from gatekeeper.ledger import IdempotencyKeyReused, InsufficientTickets, PoolFull, UnknownPool
from gatekeeper.ledger.keys import tenant_of


async def post_transfer(request: web.Request) -> web.Response:
    idempotency_key(request)
    raw = await read_json(request)
    body = parse_body(TransferBody, raw)
    source, target = pool_id(body.source), pool_id(body.target)
    if tenant_of(source) != tenant_of(target):
        raise Unprocessable(f"Pools {source!r} and {target!r} belong to different tenants; "
                            "transfers stay within one tenant.")
    if source == target:
        raise BadRequest(f"'from' and 'to' are both {source!r}; name two different pools.")
    ledger = request.app[LEDGER]

    async def transfer() -> StoredResponse:
        try:
            await ledger.transfer(source, target, body.tickets, actor=request[ACTOR],
                                  idempotency_key=idempotency_key(request))
        except UnknownPool:
            raise NotFound(f"Pool {source!r} does not exist.", pool=source) from None
        except InsufficientTickets as error:
            raise Conflict(f"Pool {source!r} has {error.balance} tickets, fewer than the "
                           f"{body.tickets} requested; nothing was moved.", pool=source,
                           balance=error.balance, tickets=body.tickets) from None
        except PoolFull as error:
            raise Unprocessable(f"Pool {target!r} has {error.balance} tickets, and "
                                f"{body.tickets} more would pass the maximum balance of "
                                "2^53-1; nothing was moved.", pool=target,
                                balance=error.balance) from None
        except IdempotencyKeyReused:
            key = idempotency_key(request)
            raise Unprocessable(f"Idempotency key {key!r} was used for another grant or "
                                "transfer of this tenant; use a new key.") from None
        found_source = await ledger.get_pool(source)
        found_target = await ledger.get_pool(target)
        return StoredResponse(status=200, body={"from": found_source, "to": found_target})

    return await run_idempotent(request, tenant_of(source), raw, transfer)


def add_routes(app: web.Application) -> None:
    app.router.add_post("/admin/v1/transfers", post_transfer)

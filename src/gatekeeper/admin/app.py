"""The admin application: bearer-token auth, problem+json errors and the route table.

Every ``/admin/v1`` path needs ``Authorization: Bearer <token>``; ``/healthz`` and
``/readyz`` are open, so bind the admin listener to a private address. Errors from
``gatekeeper.errors`` become RFC 9457 problem+json in ``problem_middleware``, the one place
where errors are turned into responses.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable, Mapping

import structlog
from aiohttp import web

from gatekeeper.admin import health, pools, records, transfers
from gatekeeper.admin.context import ACTOR, IDEMPOTENCY, READY, TOKENS
from gatekeeper.admin.idempotency import IdempotencyKeys
from gatekeeper.appkeys import LEDGER
from gatekeeper.errors import (
    GatekeeperError,
    LedgerUnavailable,
    NotFound,
    ServiceUnavailable,
    Unauthorized,
)
from gatekeeper.ledger import Ledger

log = structlog.get_logger("gatekeeper.admin")

PROBLEM_TYPE = "application/problem+json"
CHALLENGE = 'Bearer realm="gatekeeper-admin"'
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def problem_response(error: GatekeeperError) -> web.Response:
    """Return the problem+json response of ``error``."""
    return web.json_response(error.problem(), status=error.status, headers=error.headers,
                             content_type=PROBLEM_TYPE)


class MethodNotAllowed(GatekeeperError):
    status = 405
    slug = "method-not-allowed"
    title = "Method not allowed"


def _from_http_exception(error: web.HTTPException, path: str) -> GatekeeperError:
    if error.status == 404:
        if path.startswith("/admin/v1/pools/") and path.count("/") > 4:
            return NotFound("No admin route matches this path. Write a team pool id with "
                            "its slash encoded, as in /admin/v1/pools/acme%2Fml.")
        return NotFound("No admin route matches this path.")
    if isinstance(error, web.HTTPMethodNotAllowed):
        allowed = ", ".join(sorted(error.allowed_methods))
        return MethodNotAllowed(f"Method {error.method} is not allowed here; use {allowed}.",
                                headers={"Allow": allowed})
    return GatekeeperError(f"The request failed with HTTP {error.status}: {error.reason}.")


@web.middleware
async def problem_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn gatekeeper errors, aiohttp HTTP errors and ledger faults into problem+json."""
    try:
        return await handler(request)
    except GatekeeperError as error:
        return problem_response(error)
    except LedgerUnavailable as error:
        log.warning("admin_ledger_unavailable", path=request.path, error=str(error))
        return problem_response(ServiceUnavailable("The ledger store (Redis) failed or timed "
                                                   "out; retry in a moment."))
    except web.HTTPException as error:
        if error.status < 400:
            raise
        return problem_response(_from_http_exception(error, request.path))
    except Exception:
        # A bug still gets a problem+json response, without the error text or a traceback.
        log.exception("admin_request_failed", method=request.method, path=request.path)
        return problem_response(GatekeeperError("The request failed on the server; nothing "
                                                "more is known. See the gateway log."))


def _actor_for(header: str, tokens: Mapping[str, str]) -> str | None:
    """Return the actor whose token matches, comparing every token in constant time."""
    scheme, _, presented = header.partition(" ")
    if scheme.lower() != "bearer" or not presented:
        return None
    found = None
    for token, actor in tokens.items():
        if hmac.compare_digest(token.encode("utf-8"), presented.strip().encode("utf-8")):
            found = actor
    return found


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Require an admin bearer token on ``/admin/`` paths and record its actor."""
    if not request.path.startswith("/admin/"):
        return await handler(request)
    header = request.headers.get("Authorization", "")
    actor = _actor_for(header, request.app[TOKENS]())
    if actor is None:
        log.info("admin_unauthorized", path=request.path, token_present=bool(header))
        raise Unauthorized("A valid admin bearer token is required.", challenge=CHALLENGE)
    request[ACTOR] = actor
    return await handler(request)


def build_admin_app(
    *,
    ledger: Ledger,
    tokens: Callable[[], Mapping[str, str]],
    ready: Callable[[], Awaitable[bool]] | None = None,
) -> web.Application:
    """Build the admin aiohttp application.

    Args:
        ledger: the ledger to read and change.
        tokens: returns the current map of bearer token to actor name; called per request,
            so a config reload takes effect at once.
        ready: extra readiness check for ``/readyz``; by default a Redis PING must succeed.

    Returns:
        The application, with routes and middlewares installed.
    """
    app = web.Application(middlewares=[problem_middleware, auth_middleware])
    app[LEDGER] = ledger
    app[TOKENS] = tokens
    app[READY] = ready or ledger.ping
    app[IDEMPOTENCY] = IdempotencyKeys(ledger)
    health.add_routes(app)
    pools.add_routes(app)
    transfers.add_routes(app)
    records.add_routes(app)
    return app

"""Builders of the two aiohttp applications: the proxy listener and the admin listener."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping

from aiohttp import web

from gatekeeper.admin import build_admin_app as build_admin_routes
from gatekeeper.appkeys import LEDGER, RUNTIME
from gatekeeper.gateway import handle
from gatekeeper.ledger import Ledger
from gatekeeper.problems import add_request_id, problem_middleware
from gatekeeper.runtime import RuntimeHolder


def build_proxy_app(holder: RuntimeHolder, ledger: Ledger) -> web.Application:
    """Return the proxy app: every method and path goes to the gateway handler."""
    app = web.Application(middlewares=[problem_middleware], handler_args={"max_field_size": 16384})
    app[RUNTIME] = holder
    app[LEDGER] = ledger
    app.on_response_prepare.append(add_request_id)
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


def build_admin_app(
    holder: RuntimeHolder,
    ledger: Ledger,
    ready: Callable[[], Awaitable[bool]] | None = None,
) -> web.Application:
    """Return the admin app, reading admin tokens from the current snapshot on each call."""

    def tokens() -> Mapping[str, str]:
        return holder.current.admin_tokens

    app = build_admin_routes(ledger=ledger, tokens=tokens, ready=ready)
    app[RUNTIME] = holder
    return app

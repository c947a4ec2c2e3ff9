"""Builders of the two aiohttp applications: the proxy listener and the admin listener.

The proxy app owns the process's ``Metering`` (ledger health, journal and replay) as a
``cleanup_ctx`` resource. The admin app is the ledger's admin API plus the config endpoints
(``admin.config_api``) and the open ``/metrics`` page.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping

from aiohttp import web

from gatekeeper import metrics
from gatekeeper.admin import build_admin_app as build_admin_routes
from gatekeeper.admin import config_api
from gatekeeper.appkeys import LEDGER, RUNTIME
from gatekeeper.config.reload import Reloader
from gatekeeper.gateway import handle
from gatekeeper.journal import Journal
from gatekeeper.ledger import Ledger
from gatekeeper.metering import METERING, Metering
from gatekeeper.problems import add_request_id, problem_middleware
from gatekeeper.runtime import RuntimeHolder

# Seconds a stopping proxy spends replaying the journal before it leaves the rest to the
# next process.
FINAL_REPLAY_S = 5.0


def build_proxy_app(
    holder: RuntimeHolder, ledger: Ledger, metering: Metering | None = None
) -> web.Application:
    """Return the proxy app: every method and path goes to the gateway handler.

    Args:
        holder: the running snapshot.
        ledger: the process's ledger.
        metering: ledger health and journal; by default one is made with the journal at
            ``ledger.journal_path`` and ``redis.timeout_ms`` as deadline.
    """
    if metering is None:
        config = holder.current.config
        metering = Metering(ledger, Journal(config.ledger.journal_path),
                            timeout_s=config.redis.timeout_ms / 1000)
    app = web.Application(middlewares=[problem_middleware], handler_args={"max_field_size": 16384})
    app[RUNTIME] = holder
    app[LEDGER] = ledger
    app[METERING] = metering
    app.on_response_prepare.append(add_request_id)
    # First in, so its final fold runs after the requests of the draining phase settled.
    app.cleanup_ctx.append(metrics.fold_periodically)
    app.cleanup_ctx.append(_run_metering)
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


async def _run_metering(app: web.Application) -> AsyncIterator[None]:
    metering = app[METERING]
    metrics.DEFERRED_LIMIT.set(app[RUNTIME].current.config.ledger.max_deferred_tickets)
    await metering.start()
    yield
    await metering.close(FINAL_REPLAY_S)


def build_admin_app(
    holder: RuntimeHolder,
    ledger: Ledger,
    ready: Callable[[], Awaitable[bool]] | None = None,
    reloader: Reloader | None = None,
) -> web.Application:
    """Return the admin app, reading admin tokens from the current snapshot on each call.

    Args:
        holder: the running snapshot.
        ledger: the process's ledger.
        ready: the ``/readyz`` check; by default Redis must reply to PING.
        reloader: applies ``POST /admin/v1/config/reload``; by default one that reloads the
            file the running snapshot came from.
    """

    def tokens() -> Mapping[str, str]:
        return holder.current.admin_tokens

    app = build_admin_routes(ledger=ledger, tokens=tokens, ready=ready)
    app[RUNTIME] = holder
    config_api.add_routes(app, reloader or Reloader(holder))
    app.router.add_get("/metrics", metrics.metrics_handler)
    return app

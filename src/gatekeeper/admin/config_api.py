"""Admin endpoints of the running configuration: ``GET /admin/v1/config`` and reload.

Both sit under ``/admin/v1``, so the admin app's bearer-token middleware guards them like
every other admin path. A reload that fails returns 422 problem+json with a ``problems``
list; the running configuration stays in place.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from gatekeeper.config.reload import Reloader, ReloadResult
from gatekeeper.errors import GatekeeperError
from gatekeeper.runtime import Snapshot

RELOADER: web.AppKey[Reloader] = web.AppKey("config_reloader", Reloader)


class InvalidConfig(GatekeeperError):
    """A reload whose config file was rejected; the running configuration is kept."""

    status = 422
    slug = "invalid-config"
    title = "Invalid configuration"


def _describe(snapshot: Snapshot) -> dict[str, Any]:
    return {
        "version": snapshot.version,
        "loaded_at": snapshot.loaded_at.isoformat().replace("+00:00", "Z"),
        "file": snapshot.source.path,
        "routes": len(snapshot.config.routes),
        "upstreams": len(snapshot.config.upstreams),
    }


async def get_config(request: web.Request) -> web.Response:
    """Return the running version (content hash), when it was loaded and from which file."""
    reloader = request.app[RELOADER]
    body = _describe(reloader.holder.current)
    if reloader.last is not None:
        body["last_reload"] = {"result": reloader.last.result,
                               "problems": list(reloader.last.problems)}
    return web.json_response(body)


async def reload_config(request: web.Request) -> web.Response:
    """Reload the config file now; 200 when applied or unchanged, 422 when rejected.

    Raises:
        InvalidConfig: listing every problem, when the file is invalid or needs a restart.
    """
    reloader = request.app[RELOADER]
    result = await reloader.reload("admin")
    if not result.accepted:
        raise InvalidConfig(_rejection_detail(result), file=result.file,
                            result=result.result, problems=list(result.problems),
                            version=result.version)
    body = _describe(reloader.holder.current)
    body["result"] = result.result
    return web.json_response(body)


def _rejection_detail(result: ReloadResult) -> str:
    if result.result == "restart_required":
        return (f"{result.file} changes settings that need a restart; the running "
                f"configuration {result.version} stays in place.")
    return (f"{result.file} is invalid; the running configuration {result.version} stays "
            "in place. Fix the problems listed and reload again.")


def add_routes(app: web.Application, reloader: Reloader) -> None:
    """Add the config endpoints to the admin app."""
    app[RELOADER] = reloader
    app.router.add_get("/admin/v1/config", get_config)
    app.router.add_post("/admin/v1/config/reload", reload_config)

"""Liveness and readiness probes.

``/healthz`` returns 200 while the process runs, ``/readyz`` while a Redis PING succeeds.
"""

from __future__ import annotations

from aiohttp import web

from gatekeeper.admin.context import READY


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    if await request.app[READY]():
        return web.json_response({"status": "ready"})
    return web.json_response({"status": "unavailable", "detail": "Redis PING failed."},
                             status=503)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)

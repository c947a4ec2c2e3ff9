"""A JWKS endpoint on 127.0.0.1 whose keys, headers and failures each test controls.

``hits`` counts the requests to ``/jwks``, so tests can prove how often the gateway
fetches. ``/redirect`` responds with 302 to ``/jwks``, for the test that redirects are not followed.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web


class JwksServer:
    """The endpoint's keys, headers and failure mode, which tests change between requests."""

    def __init__(self) -> None:
        self.keys: list[dict[str, Any]] = []
        self.cache_control: str | None = "max-age=60"
        self.age: int | None = None
        self.status = 200
        self.body: bytes | None = None  # sent instead of the key set when set
        self.hits = 0

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/jwks", self._jwks)
        app.router.add_get("/redirect", self._redirect)
        return app

    async def _jwks(self, request: web.Request) -> web.Response:
        self.hits += 1
        headers: dict[str, str] = {}
        if self.cache_control is not None:
            headers["Cache-Control"] = self.cache_control
        if self.age is not None:
            headers["Age"] = str(self.age)

        if self.status != 200:
            return web.Response(status=self.status, text="unavailable", headers=headers)
        if self.body is not None:
            return web.Response(body=self.body, content_type="application/json", headers=headers)
        return web.json_response({"keys": self.keys}, headers=headers)

    async def _redirect(self, request: web.Request) -> web.Response:
        raise web.HTTPFound("/jwks")

"""A small upstream API for the demo and for trying gatekeeper by hand.

Run: python examples/sample_api.py --port 8081. It returns JSON that shows which
identity headers the gateway forwarded, so you can see the tenant and pool it charged.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from datetime import UTC, datetime

from aiohttp import web


async def echo(request: web.Request) -> web.Response:
    forwarded = {
        name: request.headers.get(name)
        for name in ("Gatekeeper-Tenant", "Gatekeeper-Team", "Gatekeeper-Pool", "X-Forwarded-For")
    }
    return web.json_response({
        "path": request.path,
        "query": request.query_string,
        "time": datetime.now(UTC).isoformat(),
        "forwarded": forwarded,
    })


async def report(request: web.Request) -> web.Response:
    body = await request.read()
    return web.json_response({"report": "created", "bytes": len(body)}, status=201)


async def events(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    for number in range(5):
        await response.write(f"data: {json.dumps({'event': number})}\n\n".encode())
        await asyncio.sleep(0.2)
    await response.write_eof()
    return response


async def health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def build_app() -> web.Application:
    app = web.Application()
    app.router.add_get("/v1/echo", echo)
    app.router.add_post("/v1/reports", report)
    app.router.add_get("/v1/events", events)
    app.router.add_get("/public/health", health)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8081)
    args = parser.parse_args()
    web.run_app(build_app(), host=args.host, port=args.port, print=None)


if __name__ == "__main__":
    main()

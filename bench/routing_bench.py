"""Route matching time with 10,000 routes, as ``python bench/routing_bench.py``; prints JSON.

The route table mixes what large configs hold: exact paths and path prefixes, with and
without ``methods`` and ``match.host``, and a catch-all ``/`` last. The requests are a
seeded mix. 40 % hit a prefix with a deeper tail, 30 % hit an exact path, and 20 % miss
every specific route and fall to the catch-all. The last 10 % spell a path with
percent-escapes and dot segments, which takes ``normalize_path``'s slow path.

Reported per request: ``normalize_path`` plus ``Router.match`` (what the gateway does for
every request) and ``Router.match`` alone on already normalised paths, each the median of
several rounds over the whole request list.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from collections.abc import Callable

from gatekeeper.config.model import Route
from gatekeeper.routing import Router, normalize_path

HOST = "api.example.com"
SEED = 20261204


def build_routes(count: int) -> list[Route]:
    """Return ``count`` routes: 40 % exact paths, 60 % prefixes, then a catch-all."""
    routes = []
    for index in range(count - 1):
        version = index % 4 + 1
        match: dict[str, object]
        if index % 5 < 2:
            match = {"path": f"/api/v{version}/svc{index}/status"}
        else:
            match = {"path_prefix": f"/api/v{version}/svc{index}"}
        if index % 3 == 0:
            match["methods"] = ["GET", "HEAD"]
        if index % 7 == 0:
            match["host"] = HOST
        routes.append(Route.model_validate(
            {"name": f"route-{index}", "match": match, "upstream": "api", "cost": 1}
        ))
    routes.append(Route.model_validate(
        {"name": "catch-all", "match": {"path_prefix": "/"}, "upstream": "api", "cost": 1}
    ))
    return routes


def build_requests(count: int, route_count: int) -> list[tuple[str, str]]:
    """Return ``count`` (method, raw path) pairs in the mix the module docstring names."""
    rng = random.Random(SEED)
    requests = []
    for _ in range(count):
        index = rng.randrange(route_count - 1)
        kind = rng.random()
        if kind < 0.4 and index % 5 < 2:
            # Routes with index % 5 < 2 are exact paths; move to the next prefix route.
            index = (index + 2) % (route_count - 1)
        version = index % 4 + 1
        # Routes with index % 3 == 0 accept only GET and HEAD.
        method = "GET" if index % 3 == 0 else rng.choice(("GET", "POST"))
        if kind < 0.4:
            raw = f"/api/v{version}/svc{index}/items/{rng.randrange(10**6)}"
        elif kind < 0.7:
            raw = f"/api/v{version}/svc{index}/status"
        elif kind < 0.9:
            raw = f"/api/v9/unknown{index}/a/b/c"
        else:
            raw = f"/api/v{version}/./svc{index}/%69tems/x/../%7Euser%2Fid"
        requests.append((method, raw))
    return requests


def median_us_per_call(rounds: int, calls: int, body: Callable[[], None]) -> float:
    timings = []
    for _ in range(rounds):
        started = time.perf_counter()
        body()
        timings.append(time.perf_counter() - started)
    return statistics.median(timings) / calls * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--routes", type=int, default=10_000, help="number of routes")
    parser.add_argument("--requests", type=int, default=100_000, help="requests per round")
    parser.add_argument("--rounds", type=int, default=7, help="rounds; the median is reported")
    args = parser.parse_args()

    routes = build_routes(args.routes)
    started = time.perf_counter()
    router = Router(routes)
    build_ms = (time.perf_counter() - started) * 1000

    requests = build_requests(args.requests, args.routes)
    normalized = [(method, normalize_path(raw)) for method, raw in requests]
    matched = [router.match(method, path, HOST) for method, path in normalized]
    catch_all = sum(1 for route in matched if route is not None and route.name == "catch-all")

    def full_path() -> None:
        for method, raw in requests:
            router.match(method, normalize_path(raw), HOST)

    def match_only() -> None:
        for method, path in normalized:
            router.match(method, path, HOST)

    print(json.dumps({
        "routes": args.routes,
        "requests_per_round": args.requests,
        "rounds": args.rounds,
        "router_build_ms": build_ms,
        "normalize_and_match_us": median_us_per_call(args.rounds, args.requests, full_path),
        "match_only_us": median_us_per_call(args.rounds, args.requests, match_only),
        "matched_specific_route": sum(1 for route in matched if route is not None) - catch_all,
        "matched_catch_all": catch_all,
        "unmatched": sum(1 for route in matched if route is None),
    }))


if __name__ == "__main__":
    main()

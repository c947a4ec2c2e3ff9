"""Path normalisation, route precedence and pool resolution, without any server."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gatekeeper import errors, routing
from gatekeeper.config.model import Route
from gatekeeper.routing import Router, normalize_path, resolve_pool


def route(name: str, **match: Any) -> Route:
    return Route.model_validate({"name": name, "match": match, "upstream": "u"})


NORMALIZED = [
    ("/", "/"),
    ("/a/b", "/a/b"),
    ("/a/./b", "/a/b"),
    ("/a/../b", "/b"),
    ("/a/b/..", "/a/"),
    ("/a/b/.", "/a/b/"),
    ("/a//b", "/a/b"),
    ("//a///b//", "/a/b/"),
    ("/%41%62c", "/Abc"),
    ("/%7e%2D%2e%5F", "/~-._"),
    ("/a%2Fb", "/a%2Fb"),
    ("/a%2fb", "/a%2Fb"),
    ("/a%2Fb/../c", "/c"),
    ("/a/%2e%2e/b", "/b"),
    ("/a/%2E./b", "/b"),
    ("/a/.%2e", "/"),
    ("/a/%2e/b", "/a/b"),
    ("/a/%3f%23", "/a/%3F%23"),
    ("/a%20b", "/a%20b"),
    ("/caf\u00e9", "/caf%C3%A9"),
    ("/a\\b", "/a%5Cb"),
    ("/a;b=c:d@e+f", "/a;b=c:d@e+f"),
    ("/a//../b", "/a/b"),
]


@pytest.mark.parametrize(("raw", "expected"), NORMALIZED)
def test_normalize_table(raw: str, expected: str) -> None:
    assert normalize_path(raw) == expected


REJECTED = [
    "/..",
    "/a/../..",
    "/%2e%2e",
    "/a/%2E%2E/%2e%2e/b",
    "/a/%",
    "/a/%4",
    "/a/%zz",
    "/a/%00",
    "/a/%0a",
    "/a/%7F",
    "/a\x00b",
    "/a\tb",
    "relative",
    "",
    "/\ud800",
]


@pytest.mark.parametrize("raw", REJECTED)
def test_normalize_rejects(raw: str) -> None:
    with pytest.raises(errors.BadRequest):
        normalize_path(raw)


@given(st.text(alphabet="/.%2eEfF_a", max_size=30))
def test_normalize_idempotent(tail: str) -> None:
    """Whatever normalises once is a fixed point, so matching and forwarding agree."""
    try:
        once = normalize_path("/" + tail)
    except errors.BadRequest:
        return
    assert normalize_path(once) == once


@given(st.text(alphabet="/.%2eEfF_a", max_size=30))
def test_normalize_leaves_no_dots(tail: str) -> None:
    try:
        once = normalize_path("/" + tail)
    except errors.BadRequest:
        return
    segments = once.split("/")
    assert "." not in segments
    assert ".." not in segments
    assert "//" not in once


PRECEDENCE_ROUTES = [
    route("prefix-v1", path_prefix="/v1"),
    route("prefix-reports", path_prefix="/v1/reports"),
    route("prefix-reports-get", path_prefix="/v1/reports", methods=["get"]),
    route("exact-reports", path="/v1/reports"),
    route("prefix-reports-late", path_prefix="/v1/reports"),
    route("exact-daily-post", path="/v1/reports/daily", methods=["POST"]),
    route("exact-daily", path="/v1/reports/daily"),
    route("host-only", path_prefix="/h", host="API.example.com:8443"),
    route("encoded", path_prefix="/v2/%7Euser/../docs"),
    route("root", path_prefix="/"),
]

PRECEDENCE = [
    ("GET", "/v1/reports", None, "exact-reports"),
    ("GET", "/v1/reports/x", None, "prefix-reports-get"),
    ("POST", "/v1/reports/x", None, "prefix-reports"),
    ("POST", "/v1/reports/", None, "prefix-reports"),
    ("GET", "/v1/reportsX", None, "prefix-v1"),
    ("GET", "/v1", None, "prefix-v1"),
    ("GET", "/v10", None, "root"),
    ("POST", "/v1/reports/daily", None, "exact-daily-post"),
    ("GET", "/v1/reports/daily", None, "exact-daily"),
    ("GET", "/v1/reports/daily/x", None, "prefix-reports-get"),
    ("get", "/v1/reports/x", None, "prefix-reports-get"),
    ("GET", "/h/x", "api.example.com", "host-only"),
    ("GET", "/h/x", "API.EXAMPLE.COM:80", "host-only"),
    ("GET", "/h/x", "other.example.com", "root"),
    ("GET", "/h/x", None, "root"),
    ("GET", "/v2/docs/a", None, "encoded"),
    ("GET", "/", None, "root"),
]


@pytest.mark.parametrize(("method", "path", "host", "expected"), PRECEDENCE)
def test_precedence_table(method: str, path: str, host: str | None, expected: str) -> None:
    matched = Router(PRECEDENCE_ROUTES).match(method, path, host)
    assert matched is not None
    assert matched.name == expected


def test_no_route_returns_none() -> None:
    router = Router([route("a", path_prefix="/a"), route("b", path="/b", methods=["GET"])])
    assert router.match("GET", "/c", None) is None
    assert router.match("POST", "/b", None) is None


def test_file_order_breaks_ties() -> None:
    router = Router([route("first", path_prefix="/a"), route("second", path_prefix="/a/")])
    matched = router.match("GET", "/a/b", None)
    assert matched is not None
    assert matched.name == "first"


def test_ipv6_host_port_ignored() -> None:
    router = Router([route("v6", path_prefix="/", host="[::1]")])
    matched = router.match("GET", "/", "[::1]:8080")
    assert matched is not None
    assert matched.name == "v6"


def test_pattern_above_root_raises() -> None:
    with pytest.raises(ValueError, match="climbs above the root"):
        Router([route("bad", path_prefix="/a/../..")])


def _many_routes() -> list[Route]:
    routes = []
    for i in range(5_000):
        routes.append(route(f"exact-{i}", path=f"/svc{i % 50}/item{i}"))
        routes.append(route(f"prefix-{i}", path_prefix=f"/svc{i % 50}/group{i}"))
    return routes


def test_ten_thousand_routes_correct() -> None:
    """Every one of 10,000 routes is found, and near misses match no route."""
    routes = _many_routes()
    router = Router(routes)
    for i in range(5_000):
        exact = router.match("GET", f"/svc{i % 50}/item{i}", None)
        prefix = router.match("GET", f"/svc{i % 50}/group{i}/deep/er", None)
        assert exact is not None
        assert exact.name == f"exact-{i}"
        assert prefix is not None
        assert prefix.name == f"prefix-{i}"
    assert router.match("GET", "/svc1/group1x", None) is None
    assert router.match("GET", "/svc1/item1/x", None) is None


def test_ten_thousand_routes_not_scanned(monkeypatch: pytest.MonkeyPatch) -> None:
    """A lookup checks only the routes on its own path, never all 10,000 of them."""
    router = Router(_many_routes())
    checked: list[str] = []
    original = routing._Entry.accepts

    def counting(entry: routing._Entry, method: str, host: str | None) -> bool:
        checked.append(entry.route.name)
        return original(entry, method, host)

    monkeypatch.setattr(routing._Entry, "accepts", counting)
    matched = router.match("GET", "/svc7/group4007/deep", None)
    assert matched is not None
    assert matched.name == "prefix-4007"
    assert checked == ["prefix-4007"]


def test_pool_template_renders() -> None:
    gpu = Route.model_validate(
        {"name": "gpu", "match": {"path": "/g"}, "upstream": "u", "pool": "{tenant}/gpu"}
    )
    assert resolve_pool(gpu, "acme", None) == ("acme/gpu",)
    assert resolve_pool(gpu, "acme", "ml") == ("acme/gpu",)


def test_pool_team_template_needs_team() -> None:
    team = Route.model_validate(
        {"name": "team", "match": {"path": "/t"}, "upstream": "u", "pool": "{tenant}/{team}"}
    )
    assert resolve_pool(team, "acme", "ml") == ("acme/ml",)
    with pytest.raises(errors.Forbidden, match="no team claim"):
        resolve_pool(team, "acme", None)


def test_pool_defaults() -> None:
    plain = route("plain", path="/p")
    assert resolve_pool(plain, "acme", "ml") == ("acme/ml", "acme")
    assert resolve_pool(plain, "acme", None) == ("acme",)

"""The admin API over HTTP: auth, grants with idempotency keys, pool reads and health."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from gatekeeper.admin import build_admin_app
from gatekeeper.ledger import Ledger, connect_redis

TOKEN = "s3cret-admin-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
PROBLEM = "application/problem+json"

ClientFactory = Callable[..., Awaitable[TestClient[Any, Any]]]


@pytest.fixture
async def admin(ledger: Ledger, aiohttp_client: ClientFactory) -> TestClient[Any, Any]:
    app = build_admin_app(ledger=ledger, tokens=lambda: {TOKEN: "ops"})
    return await aiohttp_client(app)


def grant_headers(key: str) -> dict[str, str]:
    return {**AUTH, "Idempotency-Key": key}


async def test_grant_creates_pool(admin: TestClient[Any, Any]) -> None:
    response = await admin.post("/admin/v1/pools/acme/grants", json={"tickets": 10},
                                headers=grant_headers("k1"))
    assert response.status == 201
    body = await response.json()
    assert body["grant"]["tickets"] == 10
    assert body["pool"]["balance"] == 10
    pool = await admin.get("/admin/v1/pools/acme", headers=AUTH)
    assert (await pool.json())["balance"] == 10


async def test_team_pool_url_encoded(admin: TestClient[Any, Any]) -> None:
    response = await admin.post("/admin/v1/pools/acme%2Fml/grants", json={"tickets": 4},
                                headers=grant_headers("k1"))
    assert response.status == 201
    pool = await (await admin.get("/admin/v1/pools/acme%2Fml", headers=AUTH)).json()
    assert pool["pool"] == "acme/ml"
    assert pool["settings"]["parent"] == "acme"


async def test_grant_with_expiry_and_note(admin: TestClient[Any, Any]) -> None:
    body = {"tickets": 5, "expires_at": "2999-01-01T00:00:00Z", "note": "trial"}
    response = await admin.post("/admin/v1/pools/acme/grants", json=body,
                                headers=grant_headers("k1"))
    grant = (await response.json())["grant"]
    assert grant["expires_at"] == "2999-01-01T00:00:00Z"
    assert grant["note"] == "trial"


async def test_grant_replay_same_body(admin: TestClient[Any, Any]) -> None:
    first = await admin.post("/admin/v1/pools/acme/grants", json={"tickets": 10},
                             headers=grant_headers("k1"))
    again = await admin.post("/admin/v1/pools/acme/grants", data=' { "tickets" : 10 } ',
                             headers={**grant_headers("k1"), "Content-Type": "application/json"})
    assert again.status == first.status
    assert await again.json() == await first.json()
    pool = await (await admin.get("/admin/v1/pools/acme", headers=AUTH)).json()
    assert pool["balance"] == 10


async def test_grant_key_reuse_other_body(admin: TestClient[Any, Any]) -> None:
    await admin.post("/admin/v1/pools/acme/grants", json={"tickets": 10},
                     headers=grant_headers("k1"))
    other = await admin.post("/admin/v1/pools/acme/grants", json={"tickets": 11},
                             headers=grant_headers("k1"))
    assert other.status == 422
    assert other.content_type == PROBLEM


async def test_concurrent_duplicates_apply_once(admin: TestClient[Any, Any]) -> None:
    responses = await asyncio.gather(*(
        admin.post("/admin/v1/pools/acme/grants", json={"tickets": 10},
                   headers=grant_headers("k1"))
        for _ in range(8)
    ))
    statuses = sorted(r.status for r in responses)
    assert set(statuses) <= {201, 409}
    assert 201 in statuses
    pool = await (await admin.get("/admin/v1/pools/acme", headers=AUTH)).json()
    assert pool["balance"] == 10


async def test_key_scoped_to_tenant(admin: TestClient[Any, Any]) -> None:
    await admin.post("/admin/v1/pools/acme/grants", json={"tickets": 1},
                     headers=grant_headers("k1"))
    other = await admin.post("/admin/v1/pools/globex/grants", json={"tickets": 1},
                             headers=grant_headers("k1"))
    assert other.status == 201


async def test_grant_without_key(admin: TestClient[Any, Any]) -> None:
    response = await admin.post("/admin/v1/pools/acme/grants", json={"tickets": 1},
                                headers=AUTH)
    assert response.status == 400
    assert "Idempotency-Key" in (await response.json())["detail"]


@pytest.mark.parametrize("body", [
    {"tickets": 0},
    {"tickets": 2**53},
    {"tickets": "5"},
    {"tickets": 1.5},
    {"tickets": True},
    {},
    {"tickets": 1, "extra": 1},
    {"tickets": 1, "expires_at": "tomorrow"},
    {"tickets": 1, "expires_at": "2999-01-01T00:00:00"},
    {"tickets": 1, "expires_at": "2001-01-01T00:00:00Z"},
    [1],
])
async def test_invalid_grant_body(admin: TestClient[Any, Any], body: Any) -> None:
    response = await admin.post("/admin/v1/pools/acme/grants", json=body,
                                headers=grant_headers("k1"))
    assert response.status == 400
    assert response.content_type == PROBLEM
    assert (await response.json())["type"].endswith("/bad-request")


async def test_grant_not_json(admin: TestClient[Any, Any]) -> None:
    response = await admin.post("/admin/v1/pools/acme/grants", data=b"{tickets",
                                headers=grant_headers("k1"))
    assert response.status == 400


async def test_failed_grant_frees_key(admin: TestClient[Any, Any]) -> None:
    body = {"tickets": 1, "expires_at": "2001-01-01T00:00:00Z"}
    await admin.post("/admin/v1/pools/acme/grants", json=body, headers=grant_headers("k1"))
    again = await admin.post("/admin/v1/pools/acme/grants", json=body,
                             headers=grant_headers("k1"))
    assert again.status == 400


@pytest.mark.parametrize("pool", ["-bad", "a%2Fb%2Fc", "a%20b", "x" * 65])
async def test_invalid_pool_id(admin: TestClient[Any, Any], pool: str) -> None:
    response = await admin.get(f"/admin/v1/pools/{pool}", headers=AUTH)
    assert response.status == 400


async def test_unknown_pool(admin: TestClient[Any, Any]) -> None:
    response = await admin.get("/admin/v1/pools/nobody", headers=AUTH)
    assert response.status == 404
    assert response.content_type == PROBLEM


@pytest.mark.parametrize("header", [None, "Bearer wrong", f"Basic {TOKEN}", "Bearer "])
async def test_bad_admin_token(admin: TestClient[Any, Any], header: str | None) -> None:
    headers = {} if header is None else {"Authorization": header}
    response = await admin.get("/admin/v1/pools/acme", headers=headers)
    assert response.status == 401
    assert response.content_type == PROBLEM
    assert "Bearer" in response.headers["WWW-Authenticate"]


async def test_token_never_in_body(admin: TestClient[Any, Any]) -> None:
    response = await admin.get("/admin/v1/pools/acme", headers={"Authorization": "Bearer x1y2"})
    assert "x1y2" not in await response.text()


async def test_unknown_admin_path(admin: TestClient[Any, Any]) -> None:
    response = await admin.get("/admin/v1/nothing", headers=AUTH)
    assert response.status == 404
    assert response.content_type == PROBLEM


async def test_wrong_method(admin: TestClient[Any, Any]) -> None:
    response = await admin.delete("/admin/v1/pools/acme", headers=AUTH)
    assert response.status == 405
    assert response.content_type == PROBLEM


async def test_healthz_open(admin: TestClient[Any, Any]) -> None:
    response = await admin.get("/healthz")
    assert response.status == 200


async def test_readyz_while_redis_answers(admin: TestClient[Any, Any]) -> None:
    response = await admin.get("/readyz")
    assert response.status == 200


async def test_readyz_without_redis(ledger: Ledger, aiohttp_client: ClientFactory) -> None:
    async def never_ready() -> bool:
        return False

    app = build_admin_app(ledger=ledger, tokens=dict, ready=never_ready)
    client = await aiohttp_client(app)
    assert (await client.get("/readyz")).status == 503
    assert (await client.get("/healthz")).status == 200


async def test_redis_down_gives_503(private_redis: Callable[..., Any],
                                    aiohttp_client: ClientFactory) -> None:
    server = private_redis(appendonly=False)
    ledger = Ledger(await connect_redis(server.url, timeout_ms=500, max_connections=2))
    client = await aiohttp_client(build_admin_app(ledger=ledger, tokens=lambda: {TOKEN: "ops"}))
    server.kill()
    assert (await client.get("/readyz")).status == 503
    response = await client.get("/admin/v1/pools/acme", headers=AUTH)
    assert response.status == 503
    assert response.content_type == PROBLEM
    assert "Retry-After" in response.headers
    await ledger.close()


async def test_array_body_named_plainly(admin: TestClient[Any, Any]) -> None:
    response = await admin.post("/admin/v1/pools/acme/grants", json=[1, 2],
                                headers=grant_headers("array-1"))
    body = await response.json()
    assert response.status == 400
    assert body["detail"] == "The request body must be a JSON object, not an array."


async def test_unencoded_team_pool_hint(admin: TestClient[Any, Any]) -> None:
    response = await admin.get("/admin/v1/pools/acme/ml", headers=AUTH)
    body = await response.json()
    assert response.status == 404
    assert "acme%2Fml" in body["detail"]

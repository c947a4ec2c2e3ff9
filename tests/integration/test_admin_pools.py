"""The admin API for settings, transfers, usage and audit."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from gatekeeper.admin import build_admin_app
from gatekeeper.ledger import ChargeRequest, Ledger

AUTH = {"Authorization": "Bearer t0ken"}
ClientFactory = Callable[..., Awaitable[TestClient[Any, Any]]]


@pytest.fixture
async def admin(ledger: Ledger, aiohttp_client: ClientFactory) -> TestClient[Any, Any]:
    return await aiohttp_client(build_admin_app(ledger=ledger, tokens=lambda: {"t0ken": "ops"}))


async def post(admin: TestClient[Any, Any], path: str, body: Any, key: str) -> Any:
    return await admin.post(path, json=body, headers={**AUTH, "Idempotency-Key": key})


async def test_put_creates_pool(admin: TestClient[Any, Any]) -> None:
    response = await admin.put("/admin/v1/pools/acme%2Fml", headers=AUTH,
                               json={"borrow": True, "auto_refill": {"below": 5, "amount": 20}})
    assert response.status == 201
    settings = (await response.json())["settings"]
    assert settings["borrow"] is True
    assert settings["auto_refill"] == {"below": 5, "amount": 20}
    assert settings["parent"] == "acme"


async def test_put_changes_subset(admin: TestClient[Any, Any]) -> None:
    await admin.put("/admin/v1/pools/acme", headers=AUTH, json={"reserve": 5})
    response = await admin.put("/admin/v1/pools/acme", headers=AUTH, json={"overdraft": 9})
    assert response.status == 200
    settings = (await response.json())["settings"]
    assert settings["reserve"] == 5
    assert settings["overdraft"] == 9


async def test_put_clears_auto_refill(admin: TestClient[Any, Any]) -> None:
    await admin.put("/admin/v1/pools/acme%2Fml", headers=AUTH,
                    json={"auto_refill": {"below": 1, "amount": 2}})
    response = await admin.put("/admin/v1/pools/acme%2Fml", headers=AUTH,
                               json={"auto_refill": None})
    assert (await response.json())["settings"]["auto_refill"] is None


async def test_parent_of_other_tenant(admin: TestClient[Any, Any]) -> None:
    response = await admin.put("/admin/v1/pools/acme%2Fml", headers=AUTH,
                               json={"parent": "globex"})
    assert response.status == 422


@pytest.mark.parametrize("body", [
    {"reserve": -1},
    {"borrow": "yes"},
    {"auto_refill": {"below": 1}},
    {"colour": "blue"},
    {"parent": "acme/other"},
    {"parent": "bad id"},
])
async def test_invalid_settings(admin: TestClient[Any, Any], body: Any) -> None:
    response = await admin.put("/admin/v1/pools/acme%2Fml", headers=AUTH, json=body)
    assert response.status == 400


async def test_borrow_on_tenant_pool(admin: TestClient[Any, Any]) -> None:
    response = await admin.put("/admin/v1/pools/acme", headers=AUTH, json={"borrow": True})
    assert response.status == 400


async def test_transfer_moves_tickets(admin: TestClient[Any, Any]) -> None:
    await post(admin, "/admin/v1/pools/acme/grants", {"tickets": 10}, "g1")
    response = await post(admin, "/admin/v1/transfers",
                          {"from": "acme", "to": "acme/ml", "tickets": 4}, "t1")
    assert response.status == 200
    body = await response.json()
    assert body["from"]["balance"] == 6
    assert body["to"]["balance"] == 4


async def test_transfer_insufficient(admin: TestClient[Any, Any]) -> None:
    await post(admin, "/admin/v1/pools/acme/grants", {"tickets": 3}, "g1")
    response = await post(admin, "/admin/v1/transfers",
                          {"from": "acme", "to": "acme/ml", "tickets": 4}, "t1")
    assert response.status == 409
    pool = await (await admin.get("/admin/v1/pools/acme", headers=AUTH)).json()
    assert pool["balance"] == 3


async def test_transfer_across_tenants(admin: TestClient[Any, Any]) -> None:
    response = await post(admin, "/admin/v1/transfers",
                          {"from": "acme", "to": "globex", "tickets": 1}, "t1")
    assert response.status == 422


async def test_transfer_replay(admin: TestClient[Any, Any]) -> None:
    await post(admin, "/admin/v1/pools/acme/grants", {"tickets": 10}, "g1")
    body = {"from": "acme", "to": "acme/ml", "tickets": 4}
    first = await post(admin, "/admin/v1/transfers", body, "t1")
    again = await post(admin, "/admin/v1/transfers", body, "t1")
    assert await again.json() == await first.json()
    other = await post(admin, "/admin/v1/transfers", {**body, "tickets": 5}, "t1")
    assert other.status == 422


async def test_transfer_without_key(admin: TestClient[Any, Any]) -> None:
    response = await admin.post("/admin/v1/transfers", headers=AUTH,
                                json={"from": "acme", "to": "acme/ml", "tickets": 1})
    assert response.status == 400


async def test_usage_by_route(admin: TestClient[Any, Any], ledger: Ledger) -> None:
    await post(admin, "/admin/v1/pools/acme/grants", {"tickets": 10}, "g1")
    for index, route in enumerate(["chat", "chat", "embed"]):
        await ledger.charge(ChargeRequest("acme", ("acme",), 2, route, f"c{index}"))
    await ledger.refund("acme", "c0")
    response = await admin.get("/admin/v1/pools/acme/usage?granularity=day", headers=AUTH)
    buckets = {b["route"]: b for b in (await response.json())["buckets"]}
    assert buckets["chat"]["requests"] == 2
    assert buckets["chat"]["tickets"] == 2
    assert buckets["embed"]["tickets"] == 2


@pytest.mark.parametrize("query", ["granularity=week", "from=yesterday",
                                   "from=2025-01-01T00:00:00", "from=2030-01-01T00:00:00Z"])
async def test_usage_invalid_query(admin: TestClient[Any, Any], query: str) -> None:
    await post(admin, "/admin/v1/pools/acme/grants", {"tickets": 1}, "g1")
    response = await admin.get(f"/admin/v1/pools/acme/usage?{query}", headers=AUTH)
    assert response.status == 400


async def test_audit_newest_first(admin: TestClient[Any, Any]) -> None:
    for index in range(3):
        await post(admin, "/admin/v1/pools/acme/grants", {"tickets": index + 1}, f"g{index}")
    page = await (await admin.get("/admin/v1/audit?tenant=acme&limit=2", headers=AUTH)).json()
    assert [e["tickets"] for e in page["entries"]] == [3, 2]
    assert page["entries"][0]["actor"] == "ops"
    assert page["entries"][0]["key"] == "g2"
    rest = await (await admin.get(f"/admin/v1/audit?tenant=acme&before={page['next']}",
                                  headers=AUTH)).json()
    assert [e["tickets"] for e in rest["entries"]] == [1]
    assert rest["next"] is None


@pytest.mark.parametrize("query", ["", "tenant=a%20b", "tenant=acme&limit=0",
                                   "tenant=acme&before=x"])
async def test_audit_invalid_query(admin: TestClient[Any, Any], query: str) -> None:
    response = await admin.get(f"/admin/v1/audit?{query}", headers=AUTH)
    assert response.status == 400

"""Attacks on the admin API: bad bodies, ids, queries and idempotency keys.

Every bad request must get a 4xx problem+json response and change no balance. The tests run on
the single server and on the 3-master cluster.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from gatekeeper.admin import build_admin_app
from gatekeeper.errors import LedgerUnavailable
from gatekeeper.ledger import ChargeRequest, Ledger
from gatekeeper.ledger.models import MAX_TICKETS
from gatekeeper.ledger.verify import verify_tenant

TOKEN = "attack-admin-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
PROBLEM = "application/problem+json"

ClientFactory = Callable[..., Awaitable[TestClient[Any, Any]]]
Admin = TestClient[Any, Any]


@pytest.fixture
async def admin(ledger: Ledger, aiohttp_client: ClientFactory) -> Admin:
    return await aiohttp_client(build_admin_app(ledger=ledger, tokens=lambda: {TOKEN: "ops"}))


def keyed(key: str) -> dict[str, str]:
    return {**AUTH, "Idempotency-Key": key}


async def grant(admin: Admin, pool: str, tickets: int, key: str) -> None:
    response = await admin.post(f"/admin/v1/pools/{pool.replace('/', '%2F')}/grants",
                                json={"tickets": tickets}, headers=keyed(key))
    assert response.status == 201, await response.text()


async def balance(admin: Admin, pool: str) -> int | None:
    response = await admin.get(f"/admin/v1/pools/{pool.replace('/', '%2F')}", headers=AUTH)
    if response.status == 404:
        return None
    return int((await response.json())["balance"])


async def pool_ids(ledger: Ledger, tenant: str) -> set[str]:
    return set(await ledger.client.smembers(ledger.keys.pools(tenant)))


async def assert_problem(response: Any, status: int) -> dict[str, Any]:
    text = await response.text()
    assert response.status == status, text
    assert response.content_type == PROBLEM, text
    assert "Traceback" not in text
    body: dict[str, Any] = json.loads(text)
    assert body["status"] == status
    assert body["type"].startswith("https://")
    return body


# Request bodies: JSON that is valid but hostile, and JSON that is not JSON.

BAD_GRANT_BODIES = [
    {"tickets": True},
    {"tickets": False},
    {"tickets": 1.0},
    {"tickets": 1e3},
    {"tickets": -1},
    {"tickets": 0},
    {"tickets": 2**53},
    {"tickets": 2**63},
    {"tickets": 2**64 + 1},
    {"tickets": "10"},
    {"tickets": None},
    {"tickets": [10]},
    {"tickets": {"n": 10}},
    {"tickets": 1, "note": 5},
    {"tickets": 1, "note": "x" * 501},
    {"tickets": 1, "note": ["a"]},
    {"tickets": 1, "expires_at": ""},
    {"tickets": 1, "expires_at": "2999-13-01T00:00:00Z"},
    {"tickets": 1, "expires_at": "2999-01-01"},
    {"tickets": 1, "expires_at": "2999-01-01T00:00:00"},
    {"tickets": 1, "expires_at": "1999-01-01T00:00:00Z"},
    {"tickets": 1, "expires_at": "1970-01-01T00:00:00Z"},
    {"tickets": 1, "expires_at": "1970-01-01T00:00:00.0004Z"},
    {"tickets": 1, "expires_at": "9999-12-31T23:59:59-12:00"},
    {"tickets": 1, "expires_at": True},
    {"tickets": 1, "expires_at": {"at": 1}},
    {"tickets": 1, "Tickets": 1},
    {"TICKETS": 1},
    {},
    [],
    [{"tickets": 1}],
    "tickets",
    10,
    None,
    True,
]


@pytest.mark.parametrize("body", BAD_GRANT_BODIES)
async def test_bad_grant_body(admin: Admin, ledger: Ledger, body: Any) -> None:
    response = await admin.post("/admin/v1/pools/acme/grants", json=body, headers=keyed("k1"))
    await assert_problem(response, 400)
    assert await pool_ids(ledger, "acme") == set()


RAW_BODIES = [
    b"",
    b" ",
    b"{",
    b"{tickets: 1}",
    b"{'tickets': 1}",
    b'{"tickets": 1,}',
    b'{"tickets": NaN}',
    b'{"tickets": Infinity}',
    b'{"tickets": 1e999}',
    b'{"tickets": 1' + b"0" * 5000 + b"}",
    b'{"tickets": 1, "note": ' + b"[" * 20000 + b"]" * 20000 + b"}",
    b"[" * 30000 + b"]" * 30000,
    b'{"tickets": 1}{"tickets": 2}',
    b"\xff\xfe{\x00}\x00",
    b'{"tickets": 1, "note": "\xc3\x28"}',
    b'{"tickets": 1, "note": "\\ud800"}',
    b"\xef\xbb\xbf" + b'{"tickets": 1}',
    b'{"tickets": 1, "note": "' + b"x" * 70000 + b'"}',
]


@pytest.mark.parametrize("raw", RAW_BODIES, ids=lambda raw: repr(raw[:24]))
async def test_raw_grant_body(admin: Admin, ledger: Ledger, raw: bytes) -> None:
    response = await admin.post("/admin/v1/pools/acme/grants", data=raw,
                                headers={**keyed("k1"), "Content-Type": "application/json"})
    await assert_problem(response, 400)
    assert await pool_ids(ledger, "acme") == set()


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded",
                                          "multipart/form-data; boundary=x"])
async def test_form_grant_body(admin: Admin, ledger: Ledger, content_type: str) -> None:
    response = await admin.post("/admin/v1/pools/acme/grants", data=b"tickets=5",
                                headers={**keyed("k1"), "Content-Type": content_type})
    await assert_problem(response, 400)
    assert await pool_ids(ledger, "acme") == set()


async def test_chunked_grant_body(admin: Admin) -> None:
    # A body may arrive in pieces; the first piece alone is not valid JSON.
    async def pieces() -> AsyncIterator[bytes]:
        yield b'{"tickets": '
        await asyncio.sleep(0.05)
        yield b"7}"

    response = await admin.post("/admin/v1/pools/acme/grants", data=pieces(),
                                headers=keyed("k1"))
    assert response.status == 201, await response.text()
    assert await balance(admin, "acme") == 7


async def test_chunked_body_too_large(admin: Admin, ledger: Ledger) -> None:
    async def pieces() -> AsyncIterator[bytes]:
        yield b'{"tickets": 1, "note": "'
        for _ in range(20):
            await asyncio.sleep(0)
            yield b"x" * 8192
        yield b'"}'

    response = await admin.post("/admin/v1/pools/acme/grants", data=pieces(),
                                headers=keyed("k1"))
    await assert_problem(response, 400)
    assert await pool_ids(ledger, "acme") == set()


async def test_grant_at_max_tickets(admin: Admin) -> None:
    response = await admin.post("/admin/v1/pools/acme/grants", json={"tickets": MAX_TICKETS},
                                headers=keyed("k1"))
    assert response.status == 201
    assert (await response.json())["pool"]["balance"] == MAX_TICKETS


async def test_grant_past_max_balance(admin: Admin, ledger: Ledger) -> None:
    await grant(admin, "acme", MAX_TICKETS, "g1")
    response = await admin.post("/admin/v1/pools/acme/grants", json={"tickets": 1},
                                headers=keyed("g2"))
    await assert_problem(response, 422)
    assert await balance(admin, "acme") == MAX_TICKETS
    assert (await verify_tenant(ledger, "acme")).ok


async def test_far_expiry_keeps_pool_readable(admin: Admin) -> None:
    body = {"tickets": 1, "expires_at": "9999-12-31T23:59:59-12:00"}
    await admin.post("/admin/v1/pools/acme/grants", json=body, headers=keyed("k1"))
    await grant(admin, "acme", 2, "k2")
    response = await admin.get("/admin/v1/pools/acme", headers=AUTH)
    assert response.status == 200
    assert (await response.json())["balance"] == 2


async def test_epoch_expiry_not_never(admin: Admin) -> None:
    body = {"tickets": 5, "expires_at": "1970-01-01T00:00:00Z"}
    response = await admin.post("/admin/v1/pools/acme/grants", json=body, headers=keyed("k1"))
    body_text = await response.text()
    assert response.status == 400, body_text
    assert await balance(admin, "acme") is None


# Pool ids in the path.

BAD_POOL_PATHS = [
    "acme%2F",
    "%2Facme",
    "acme%2Fml%2Fx",
    "a%2Fb%2Fc",
    "%7B%7D",
    "acme%7Bx%7D",
    "%7Bacme%7D",
    "acme%252Fml",
    "acme%0A",
    "acme%0Aml",
    "acme%0D%0A",
    "acme%00",
    "acme%20",
    "%20acme",
    "ac%3Ame",
    "ac%7Cme",
    "-acme",
    ".acme",
    "_acme",
    "acme%2F..",
    "acme%2F.",
    "acme%2F-x",
    "x" * 65,
    "acme%2F" + "y" * 65,
    "%C3%A9",
    "acm%C3%A9",
    "%EF%BC%A1cme",
    "acme%E2%80%8B",
]


@pytest.mark.parametrize("path_pool", BAD_POOL_PATHS)
async def test_bad_pool_grant(admin: Admin, ledger: Ledger, path_pool: str) -> None:
    response = await admin.post(f"/admin/v1/pools/{path_pool}/grants", json={"tickets": 5},
                                headers=keyed("k1"))
    assert response.status in (400, 404), await response.text()
    await assert_problem(response, response.status)
    assert await ledger.client.keys("*") == []


@pytest.mark.parametrize("path_pool", BAD_POOL_PATHS)
async def test_bad_pool_put(admin: Admin, ledger: Ledger, path_pool: str) -> None:
    response = await admin.put(f"/admin/v1/pools/{path_pool}", json={"reserve": 1},
                               headers=AUTH)
    assert response.status in (400, 404), await response.text()
    await assert_problem(response, response.status)
    assert await ledger.client.keys("*") == []


@pytest.mark.parametrize("path_pool", BAD_POOL_PATHS)
async def test_bad_pool_usage(admin: Admin, path_pool: str) -> None:
    response = await admin.get(f"/admin/v1/pools/{path_pool}/usage", headers=AUTH)
    assert response.status in (400, 404), await response.text()
    await assert_problem(response, response.status)


async def test_pool_id_64_chars(admin: Admin) -> None:
    team = "t" * 64
    await grant(admin, f"acme/{team}", 3, "k1")
    assert await balance(admin, f"acme/{team}") == 3


async def test_unencoded_slash_not_a_pool(admin: Admin, ledger: Ledger) -> None:
    response = await admin.post("/admin/v1/pools/acme/ml/grants", json={"tickets": 5},
                                headers=keyed("k1"))
    await assert_problem(response, 404)
    assert await ledger.client.keys("*") == []


# Settings.

BAD_SETTINGS = [
    {"reserve": True},
    {"reserve": 1.0},
    {"reserve": "1"},
    {"reserve": -1},
    {"reserve": 2**53},
    {"overdraft": 2**63},
    {"overdraft": False},
    {"low_balance": 1e3},
    {"borrow": 1},
    {"borrow": "true"},
    {"borrow": None, "extra": 1},
    {"auto_refill": {"below": 1, "amount": 0}},
    {"auto_refill": {"below": True, "amount": 5}},
    {"auto_refill": {"below": 1, "amount": 5, "extra": 1}},
    {"auto_refill": [1, 5]},
    {"auto_refill": "1,5"},
    {"parent": ""},
    {"parent": "acme\n"},
    {"parent": "acme/ml"},
    {"parent": "acme/other"},
    {"parent": 5},
    {"parent": ["acme"]},
    [],
    "reserve",
    None,
]


@pytest.mark.parametrize("body", BAD_SETTINGS)
async def test_bad_settings(admin: Admin, ledger: Ledger, body: Any) -> None:
    await grant(admin, "acme/ml", 5, "g1")
    before = await admin.get("/admin/v1/pools/acme%2Fml", headers=AUTH)
    response = await admin.put("/admin/v1/pools/acme%2Fml", json=body, headers=AUTH)
    await assert_problem(response, 400)
    after = await admin.get("/admin/v1/pools/acme%2Fml", headers=AUTH)
    assert await after.json() == await before.json()


async def test_parent_other_tenant_unchanged(admin: Admin) -> None:
    await grant(admin, "acme/ml", 5, "g1")
    response = await admin.put("/admin/v1/pools/acme%2Fml", json={"parent": "globex"},
                               headers=AUTH)
    await assert_problem(response, 422)
    pool = await (await admin.get("/admin/v1/pools/acme%2Fml", headers=AUTH)).json()
    assert pool["settings"]["parent"] == "acme"


# Transfers.

BAD_TRANSFERS = [
    ({"from": "acme", "to": "acme", "tickets": 1}, 400),
    ({"from": "acme/ml", "to": "acme/ml", "tickets": 1}, 400),
    ({"from": "acme", "to": "globex", "tickets": 1}, 422),
    ({"from": "acme", "to": "globex/ml", "tickets": 1}, 422),
    ({"from": "acme", "to": "acme/ml", "tickets": True}, 400),
    ({"from": "acme", "to": "acme/ml", "tickets": 1.0}, 400),
    ({"from": "acme", "to": "acme/ml", "tickets": 0}, 400),
    ({"from": "acme", "to": "acme/ml", "tickets": -3}, 400),
    ({"from": "acme", "to": "acme/ml", "tickets": 2**53}, 400),
    ({"from": "acme", "to": "acme/ml", "tickets": "3"}, 400),
    ({"from": "acme", "to": "acme/ml"}, 400),
    ({"from": "acme", "tickets": 1}, 400),
    ({"to": "acme/ml", "tickets": 1}, 400),
    ({"source": "acme", "target": "acme/ml", "tickets": 1}, 400),
    ({"from": "acme", "to": "acme/ml", "tickets": 1, "note": "x"}, 400),
    ({"from": "acme", "to": "acme/", "tickets": 1}, 400),
    ({"from": "acme", "to": "acme/ml/x", "tickets": 1}, 400),
    ({"from": "acme", "to": "acme/..", "tickets": 1}, 400),
    ({"from": "acme", "to": "{acme}", "tickets": 1}, 400),
    ({"from": "acme", "to": "acme\n", "tickets": 1}, 400),
    ({"from": "acme", "to": "acme/ml\n", "tickets": 1}, 400),
    ({"from": "acme", "to": "acme%2Fml", "tickets": 1}, 400),
    ({"from": "acme", "to": "", "tickets": 1}, 400),
    ({"from": "acme", "to": 5, "tickets": 1}, 400),
    ({"from": None, "to": "acme/ml", "tickets": 1}, 400),
    ({"from": "acme", "to": "acme/ml", "tickets": 11}, 409),
    ({"from": "acme/none", "to": "acme/ml", "tickets": 1}, 404),
    ([], 400),
    ("acme", 400),
]


@pytest.mark.parametrize(("body", "status"), BAD_TRANSFERS)
async def test_bad_transfer(admin: Admin, ledger: Ledger, body: Any, status: int) -> None:
    await grant(admin, "acme", 10, "g1")
    response = await admin.post("/admin/v1/transfers", json=body, headers=keyed("t1"))
    await assert_problem(response, status)
    assert await balance(admin, "acme") == 10
    assert await pool_ids(ledger, "acme") == {"acme"}
    assert (await verify_tenant(ledger, "acme")).ok


async def test_transfer_past_max_balance(admin: Admin, ledger: Ledger) -> None:
    await grant(admin, "acme", MAX_TICKETS, "g1")
    await grant(admin, "acme/ml", 5, "g2")
    response = await admin.post("/admin/v1/transfers", headers=keyed("t1"),
                                json={"from": "acme/ml", "to": "acme", "tickets": 5})
    await assert_problem(response, 422)
    assert await balance(admin, "acme/ml") == 5
    assert (await verify_tenant(ledger, "acme")).ok


async def test_transfer_team_to_tenant(admin: Admin) -> None:
    await grant(admin, "acme/ml", 10, "g1")
    response = await admin.post("/admin/v1/transfers", headers=keyed("t1"),
                                json={"from": "acme/ml", "to": "acme", "tickets": 4})
    assert response.status == 200
    assert await balance(admin, "acme") == 4


# Idempotency keys.

@pytest.mark.parametrize("key", ["", '""', " ", "a b", "\t", "k\u00e9", "x" * 201])
async def test_bad_idempotency_key(admin: Admin, ledger: Ledger, key: str) -> None:
    headers = {**AUTH, "Idempotency-Key": key}
    response = await admin.post("/admin/v1/pools/acme/grants", json={"tickets": 5},
                                headers=headers)
    await assert_problem(response, 400)
    assert await ledger.client.keys("*") == []


@pytest.mark.parametrize("key", ["{globex}", "}{", "a:b", "k|1", "%2F", "..", "~" * 200,
                                 '"quoted"'])
async def test_odd_key_replays(admin: Admin, key: str) -> None:
    first = await admin.post("/admin/v1/pools/acme/grants", json={"tickets": 5},
                             headers=keyed(key))
    again = await admin.post("/admin/v1/pools/acme/grants", json={"tickets": 5},
                             headers=keyed(key))
    assert first.status == 201
    assert again.status == 201
    assert again.headers.get("Idempotent-Replayed") == "true"
    assert await again.json() == await first.json()
    assert await balance(admin, "acme") == 5


async def test_replay_key_order_and_spacing(admin: Admin) -> None:
    body = {"tickets": 5, "note": "n", "expires_at": "2999-01-01T00:00:00Z"}
    first = await admin.post("/admin/v1/pools/acme/grants", json=body, headers=keyed("k1"))
    raw = '\n{ "expires_at":"2999-01-01T00:00:00Z" ,\t"note" : "\\u006e", "tickets":5 }\n'
    again = await admin.post("/admin/v1/pools/acme/grants", data=raw,
                             headers={**keyed("k1"), "Content-Type": "application/json"})
    assert again.status == 201
    assert await again.json() == await first.json()
    assert await balance(admin, "acme") == 5


async def test_key_reused_other_body(admin: Admin) -> None:
    await grant(admin, "acme", 5, "k1")
    other = await admin.post("/admin/v1/pools/acme/grants", json={"tickets": 6},
                             headers=keyed("k1"))
    await assert_problem(other, 422)
    assert await balance(admin, "acme") == 5


async def test_key_reused_other_pool(admin: Admin) -> None:
    await grant(admin, "acme", 5, "k1")
    other = await admin.post("/admin/v1/pools/acme%2Fml/grants", json={"tickets": 5},
                             headers=keyed("k1"))
    await assert_problem(other, 422)
    assert await balance(admin, "acme/ml") is None


async def test_grant_key_reused_for_transfer(admin: Admin) -> None:
    await grant(admin, "acme", 10, "k1")
    other = await admin.post("/admin/v1/transfers", headers=keyed("k1"),
                             json={"from": "acme", "to": "acme/ml", "tickets": 4})
    await assert_problem(other, 422)
    assert await balance(admin, "acme") == 10


async def test_key_scoped_per_tenant(admin: Admin) -> None:
    await grant(admin, "acme", 5, "k1")
    await grant(admin, "globex", 7, "k1")
    assert await balance(admin, "acme") == 5
    assert await balance(admin, "globex") == 7


async def test_concurrent_grants_apply_once(admin: Admin) -> None:
    responses = await asyncio.gather(*(
        admin.post("/admin/v1/pools/acme/grants", json={"tickets": 3}, headers=keyed("k1"))
        for _ in range(20)))
    statuses = [r.status for r in responses]
    assert set(statuses) <= {201, 409}
    assert statuses.count(201) >= 1
    assert await balance(admin, "acme") == 3


async def test_concurrent_transfers_apply_once(admin: Admin, ledger: Ledger) -> None:
    await grant(admin, "acme", 50, "g1")
    body = {"from": "acme", "to": "acme/ml", "tickets": 6}
    responses = await asyncio.gather(*(
        admin.post("/admin/v1/transfers", json=body, headers=keyed("t1")) for _ in range(20)))
    statuses = [r.status for r in responses]
    assert set(statuses) <= {200, 409}
    assert await balance(admin, "acme/ml") == 6
    assert (await verify_tenant(ledger, "acme")).ok


async def test_concurrent_other_bodies(admin: Admin) -> None:
    responses = await asyncio.gather(*(
        admin.post("/admin/v1/pools/acme/grants", json={"tickets": n}, headers=keyed("k1"))
        for n in range(1, 11)))
    statuses = sorted(r.status for r in responses)
    assert statuses.count(201) == 1
    assert set(statuses) <= {201, 409, 422}
    applied = [n for n, r in zip(range(1, 11), responses, strict=True) if r.status == 201]
    assert await balance(admin, "acme") == applied[0]


async def test_duplicate_while_running(admin: Admin, ledger: Ledger,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    started = asyncio.Event()
    release = asyncio.Event()
    original = ledger.grant

    async def slow_grant(*args: Any, **kwargs: Any) -> Any:
        started.set()
        await release.wait()
        return await original(*args, **kwargs)

    monkeypatch.setattr(ledger, "grant", slow_grant)
    first = asyncio.create_task(admin.post("/admin/v1/pools/acme/grants", json={"tickets": 4},
                                           headers=keyed("k1")))
    await asyncio.wait_for(started.wait(), 5)
    duplicate = await admin.post("/admin/v1/pools/acme/grants", json={"tickets": 4},
                                 headers=keyed("k1"))
    release.set()
    await assert_problem(duplicate, 409)
    assert (await first).status == 201
    assert await balance(admin, "acme") == 4


async def test_retry_after_lost_read(admin: Admin, ledger: Ledger,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    # The grant ran, but reading the pool afterwards failed, so the client got 503 and the
    # key was released. A retry with the same body must replay, not grant again.
    original = ledger.get_pool
    failures = [LedgerUnavailable("read timed out")]

    async def flaky_get_pool(pool: str) -> Any:
        if failures:
            raise failures.pop()
        return await original(pool)

    monkeypatch.setattr(ledger, "get_pool", flaky_get_pool)
    first = await admin.post("/admin/v1/pools/acme/grants", json={"tickets": 4},
                             headers=keyed("k1"))
    await assert_problem(first, 503)
    again = await admin.post("/admin/v1/pools/acme/grants", json={"tickets": 4},
                             headers=keyed("k1"))
    assert again.status == 201
    assert (await again.json())["grant"]["tickets"] == 4
    assert await balance(admin, "acme") == 4


async def test_retry_other_body_after_lost_read(admin: Admin, ledger: Ledger,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    original = ledger.get_pool
    failures = [LedgerUnavailable("read timed out")]

    async def flaky_get_pool(pool: str) -> Any:
        if failures:
            raise failures.pop()
        return await original(pool)

    monkeypatch.setattr(ledger, "get_pool", flaky_get_pool)
    await admin.post("/admin/v1/pools/acme/grants", json={"tickets": 4}, headers=keyed("k1"))
    other = await admin.post("/admin/v1/pools/acme/grants", json={"tickets": 9},
                             headers=keyed("k1"))
    await assert_problem(other, 422)
    assert await balance(admin, "acme") == 4


async def test_unexpected_error_frees_key(admin: Admin, ledger: Ledger,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    original = ledger.get_pool
    failures = [RuntimeError("bug")]

    async def broken_get_pool(pool: str) -> Any:
        if failures:
            raise failures.pop()
        return await original(pool)

    monkeypatch.setattr(ledger, "get_pool", broken_get_pool)
    first = await admin.post("/admin/v1/pools/acme/grants", json={"tickets": 4},
                             headers=keyed("k1"))
    body = await assert_problem(first, 500)
    assert "bug" not in body["detail"]
    again = await admin.post("/admin/v1/pools/acme/grants", json={"tickets": 4},
                             headers=keyed("k1"))
    assert again.status == 201
    assert await balance(admin, "acme") == 4


# Usage and audit queries.

BAD_USAGE_QUERIES = [
    "from=2025-01-02T00:00:00Z&to=2025-01-01T00:00:00Z",
    "from=2025-01-01T00:00:00Z&to=2025-01-01T00:00:00Z",
    "from=2020-01-01T00:00:00Z&to=2025-01-01T00:00:00Z",
    "from=2025-01-01",
    "from=2025-01-01T00:00:00",
    "from=2025-01-01T00:00:00%2B25:00",
    "from=now",
    "from=",
    "to=",
    "to=0001-01-01T00:00:00Z",
    "to=0001-01-01T12:00:00%2B14:00",
    "from=9999-12-31T23:00:00Z",
    "from=0001-01-01T00:00:00Z&to=9999-12-31T00:00:00Z",
    "granularity=",
    "granularity=HOUR",
    "granularity=minute",
]


@pytest.mark.parametrize("query", BAD_USAGE_QUERIES)
async def test_bad_usage_query(admin: Admin, query: str) -> None:
    await grant(admin, "acme", 5, "g1")
    response = await admin.get(f"/admin/v1/pools/acme/usage?{query}", headers=AUTH)
    await assert_problem(response, 400)


async def test_usage_far_edges(admin: Admin, ledger: Ledger) -> None:
    await grant(admin, "acme", 5, "g1")
    await ledger.charge(ChargeRequest("acme", ("acme",), 2, "chat", "c1"))
    for query in ("from=9999-12-30T00:00:00Z&to=9999-12-31T00:00:00Z",
                  "from=0001-01-01T00:00:00Z&to=0001-01-02T00:00:00Z",
                  "from=1969-12-31T00:00:00Z&to=1970-01-01T01:00:00Z"):
        response = await admin.get(f"/admin/v1/pools/acme/usage?{query}", headers=AUTH)
        assert response.status == 200, query
        assert (await response.json())["buckets"] == [], query


async def test_usage_unknown_pool(admin: Admin) -> None:
    response = await admin.get("/admin/v1/pools/nobody/usage", headers=AUTH)
    await assert_problem(response, 404)


BAD_AUDIT_QUERIES = [
    "",
    "tenant=",
    "tenant=acme%0A",
    "tenant=acme%2Fml",
    "tenant=%7Bacme%7D",
    "tenant=acme&limit=-1",
    "tenant=acme&limit=0",
    "tenant=acme&limit=1001",
    "tenant=acme&limit=1e3",
    "tenant=acme&limit=1.0",
    "tenant=acme&limit=%C2%B2",
    "tenant=acme&limit=%D9%A1",
    "tenant=acme&limit=",
    "tenant=acme&limit=99999999999999999999999",
    "tenant=acme&before=",
    "tenant=acme&before=x",
    "tenant=acme&before=1",
    "tenant=acme&before=-1-1",
    "tenant=acme&before=1-1%0A",
    "tenant=acme&before=%D9%A1-%D9%A1",
    "tenant=acme&before=99999999999999999999-0",
    "tenant=acme&before=0-99999999999999999999",
    "tenant=acme&before=18446744073709551616-0",
]


@pytest.mark.parametrize("query", BAD_AUDIT_QUERIES)
async def test_bad_audit_query(admin: Admin, query: str) -> None:
    await grant(admin, "acme", 5, "g1")
    response = await admin.get(f"/admin/v1/audit?{query}", headers=AUTH)
    await assert_problem(response, 400)


async def test_audit_cursor_at_limits(admin: Admin) -> None:
    await grant(admin, "acme", 5, "g1")
    for before, count in (("18446744073709551615-18446744073709551615", 1), ("0-0", 0),
                          ("0-1", 0)):
        response = await admin.get(f"/admin/v1/audit?tenant=acme&before={before}",
                                   headers=AUTH)
        assert response.status == 200, before
        assert len((await response.json())["entries"]) == count, before


# Everything above leaves the books balanced.

async def test_attacks_leave_books_balanced(admin: Admin, ledger: Ledger) -> None:
    # 10 tickets, so that the 11-ticket transfer among the bad ones fails as it should.
    await grant(admin, "acme", 10, "g1")
    for body in BAD_GRANT_BODIES:
        await admin.post("/admin/v1/pools/acme/grants", json=body, headers=keyed("bad"))
    for body, _status in BAD_TRANSFERS:
        await admin.post("/admin/v1/transfers", json=body, headers=keyed("bad-t"))
    for body in BAD_SETTINGS:
        await admin.put("/admin/v1/pools/acme", json=body, headers=AUTH)
    assert await balance(admin, "acme") == 10
    assert await pool_ids(ledger, "acme") == {"acme"}
    assert (await verify_tenant(ledger, "acme")).ok

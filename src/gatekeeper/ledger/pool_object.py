"""Turn a pool's raw Redis fields into the pool object of the admin API.

Pool object: ``{pool, tenant, balance, debt, created_at, grants: [...], settings: {...}}``,
grants in the order charges take from them (the one that expires first comes first).
"""

from __future__ import annotations

from typing import Any

from gatekeeper.ledger.keys import tenant_of
from gatekeeper.ledger.models import iso_from_ms


def _pairs(flat: list[Any]) -> dict[str, str]:
    return {str(flat[i]): str(flat[i + 1]) for i in range(0, len(flat), 2)}


def _optional_int(value: str | None) -> int | None:
    if value is None or value == "":
        return None
    return int(value)


def settings_object(fields: dict[str, str]) -> dict[str, Any]:
    """Return the settings object of a pool from its hash fields."""
    below = _optional_int(fields.get("refill_below"))
    amount = _optional_int(fields.get("refill_amount"))
    auto_refill = None if below is None or amount is None else {"below": below, "amount": amount}
    return {
        "parent": fields.get("parent") or None,
        "borrow": fields.get("borrow") == "1",
        "auto_refill": auto_refill,
        "reserve": int(fields.get("reserve") or 0),
        "overdraft": int(fields.get("overdraft") or 0),
        "low_balance": _optional_int(fields.get("low_balance")),
    }


def _grant(grant_id: str, fields: dict[str, str]) -> dict[str, Any]:
    def field(name: str) -> str:
        return fields.get(f"{grant_id}:{name}", "")

    return {
        "id": grant_id,
        "tickets": int(field("tickets") or 0),
        "remaining": int(field("remaining") or 0),
        "expires_at": iso_from_ms(int(field("expires_at") or 0)),
        "note": field("note") or None,
        "created_at": iso_from_ms(int(field("created_at") or 0)),
    }


def pool_object(pool: str, reply: list[Any]) -> dict[str, Any]:
    """Build the pool object from the reply of ``read_pool.lua``.

    Args:
        pool: the pool id.
        reply: ``[settings fields, grant ids in expiry order, grant fields, now]``.

    Returns:
        The pool object of the admin API.
    """
    settings, grant_ids, grant_fields = _pairs(reply[0]), reply[1], _pairs(reply[2])
    live = int(settings.get("live") or 0)
    debt = int(settings.get("debt") or 0)
    return {
        "pool": pool,
        "tenant": tenant_of(pool),
        "balance": live - debt,
        "debt": debt,
        "created_at": iso_from_ms(int(settings.get("created_at") or 0)),
        "grants": [_grant(str(grant_id), grant_fields) for grant_id in grant_ids],
        "settings": settings_object(settings),
    }

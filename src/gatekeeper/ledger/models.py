"""Values that pass between the ledger and its callers: charges, grants and pools."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from gatekeeper.ledger.keys import ID_PATTERN, split_pool

# Tickets are integers from 1 to 2**53 - 1, so that they stay exact in Lua doubles and JSON.
MAX_TICKETS = 2**53 - 1
# The latest expires_at that iso_from_ms can format, because datetime ends with year 9999.
MAX_EXPIRES_MS = int(datetime(9999, 12, 31, 23, 59, 59, 999000, tzinfo=UTC).timestamp() * 1000)
MAX_ID_LENGTH = 200


@dataclass(frozen=True, slots=True)
class ChargeRequest:
    """One request's charge, as the gateway sends it.

    Attributes:
        tenant: tenant id from the token.
        pools: candidate pools in order; the first one that exists pays.
        cost: tickets to charge.
        route: route name, for the usage counters.
        charge_id: unique id; a repeated call with the same id returns the first result.
        critical: may spend below the reserve and down to minus the overdraft.
        shadow: never refused; when the pool cannot pay, nothing is charged.
        deferred: the replay of a charge whose request was already forwarded while Redis
            failed. Never refused: what the pool and, with borrow on, its parent cannot pay
            down to their floors becomes the pool's debt.
    """

    tenant: str
    pools: tuple[str, ...]
    cost: int
    route: str
    charge_id: str
    critical: bool = False
    shadow: bool = False
    deferred: bool = False


@dataclass(frozen=True, slots=True)
class ChargeResult:
    """The outcome of a charge.

    Attributes:
        charge_id: the request's charge id.
        pool: the pool that paid, or was asked to pay and refused.
        allowed: whether the request may go on.
        cost: tickets charged; for a refused charge, the tickets it would have cost.
        balance: the pool's balance after the charge; 0 for a cancelled charge.
        cancelled: a refund of this charge id came first and left a tombstone, so nothing
            was charged and ``allowed`` is False.
    """

    charge_id: str
    pool: str
    allowed: bool
    cost: int
    balance: int
    cancelled: bool = False


@dataclass(frozen=True, slots=True)
class SettleResult:
    """The outcome of settling a charge to its actual cost.

    Attributes:
        charged: tickets the charge costs now. Less than the actual cost when the pool
            could not pay the difference above its floor.
        balance: the charged pool's balance after settling.
    """

    charged: int
    balance: int


@dataclass(frozen=True, slots=True)
class GrantResult:
    """The outcome of a grant.

    Attributes:
        grant: the grant object (id, tickets, remaining, expires_at, note, created_at).
        pool: the pool id.
        balance: the pool's balance after the grant.
        debt: the pool's debt after the grant.
        debt_paid: tickets of this grant that paid debt.
        replayed: True when the idempotency key had been used, and nothing changed.
    """

    grant: dict[str, Any]
    pool: str
    balance: int
    debt: int
    debt_paid: int
    replayed: bool


def validate_tickets(value: object, name: str = "tickets", *, minimum: int = 1) -> int:
    """Return ``value`` when it is an integer ticket count, else raise ``ValueError``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if not minimum <= value <= MAX_TICKETS:
        raise ValueError(f"{name} must be from {minimum} to {MAX_TICKETS}, got {value}")
    return value


def expires_ms_of(expires_at: datetime | None) -> int:
    """Return a grant's expiry in Unix ms for the scripts, where 0 means never.

    Raises:
        ValueError: for a time after 9999-12-31T23:59:59.999Z (UTC), which could not be read
            back as a datetime.
    """
    if expires_at is None:
        return 0
    ms = ms_from_datetime(expires_at)
    if ms > MAX_EXPIRES_MS:
        raise ValueError(f"expires_at {expires_at.isoformat()} is after "
                         "9999-12-31T23:59:59Z in UTC")
    return ms


def validate_token_id(value: str, name: str) -> str:
    """Return ``value`` when it can be part of a key name: 1-200 visible ASCII characters."""
    if not 0 < len(value) <= MAX_ID_LENGTH or not value.isascii() or not value.isprintable():
        raise ValueError(f"{name} must be 1-{MAX_ID_LENGTH} visible ASCII characters")
    if " " in value:
        raise ValueError(f"{name} must not contain spaces")
    return value


def validate_charge(request: ChargeRequest) -> None:
    """Raise ``ValueError`` unless the request is valid and its pools belong to its tenant."""
    if not ID_PATTERN.match(request.tenant):
        raise ValueError(f"invalid tenant id {request.tenant!r}")
    if not request.pools:
        raise ValueError("a charge needs at least one candidate pool")
    for pool in request.pools:
        if split_pool(pool)[0] != request.tenant:
            raise ValueError(f"pool {pool!r} does not belong to tenant {request.tenant!r}")
    validate_tickets(request.cost, "cost", minimum=0)
    validate_token_id(request.charge_id, "charge_id")
    if request.deferred and request.shadow:
        raise ValueError("a charge cannot be both deferred and shadow: a shadow route never "
                         "charges what the pool cannot pay")


def parent_of(pool: str) -> str | None:
    """Return the default parent of a pool: the tenant pool for a team pool, else None."""
    tenant, team = split_pool(pool)
    return tenant if team is not None else None


def ms_to_datetime(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def iso_from_ms(ms: int) -> str | None:
    """Return UTC ISO-8601 text for a time in ms, or None for 0 (never)."""
    if ms == 0:
        return None
    return ms_to_datetime(ms).isoformat().replace("+00:00", "Z")


def ms_from_datetime(moment: datetime) -> int:
    """Return Unix milliseconds of an aware datetime; a naive one is taken as UTC."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)

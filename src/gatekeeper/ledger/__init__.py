"""The ticket ledger: pools, grants and charges in Redis, changed only by Lua scripts.

``Ledger`` is the API; ``keys`` builds every key name; ``scripts/*.lua`` are the atomic
operations; ``batch`` sends concurrent charges in one round trip; ``client`` connects and
wraps Redis errors as ``LedgerUnavailable``.
"""

from gatekeeper.ledger.client import connect_redis, mask_url
from gatekeeper.ledger.ledger import (
    GrantExpired,
    IdempotencyKeyReused,
    InsufficientTickets,
    Ledger,
    PoolFull,
    UnknownPool,
)
from gatekeeper.ledger.models import ChargeRequest, ChargeResult, GrantResult, SettleResult

__all__ = [
    "ChargeRequest",
    "ChargeResult",
    "GrantExpired",
    "GrantResult",
    "IdempotencyKeyReused",
    "InsufficientTickets",
    "Ledger",
    "PoolFull",
    "SettleResult",
    "UnknownPool",
    "connect_redis",
    "mask_url",
]

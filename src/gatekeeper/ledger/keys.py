"""Redis key layout of the ledger: the only module that builds key names.

Every key has the form ``{prefix}:{<tenant>}:<kind>[:<name>]``. The braces make the tenant
the Redis Cluster hash tag, so all keys of one tenant live in one slot and a script that
touches a team pool and its parent stays a single atomic call on one node.

Per pool (``acme`` or ``acme/ml``):

- ``pool:<pool>``    hash: ``live`` (sum of live grants), ``debt``, ``seq`` (grant counter),
  ``created_at`` and the settings (``parent``, ``borrow``, ``refill_below``,
  ``refill_amount``, ``reserve``, ``overdraft``, ``low_balance``).
- ``grants:<pool>``  sorted set of live grant ids, scored by ``expires_at`` in ms, so the
  grant that expires first comes first.
- ``grant:<pool>``   hash of grant fields, ``<id>:tickets``, ``<id>:remaining``,
  ``<id>:expires_at``, ``<id>:created_at`` and ``<id>:note``.

Per tenant:

- ``pools``          set of the tenant's pool ids.
- ``usage``          hash of counters, field ``<pool>|<hour>|<route>|<metric>``.
- ``usage-index``    sorted set of ``<pool>|<hour>|<route>`` scored by the hour in ms.
- ``audit``          stream of admin mutations.
- ``charge:<id>``    record of one charge (expires after the charge TTL).
- ``idem:<key>``     admin idempotency record (expires after 24 hours).
- ``op:<key>``       result of the money movement behind an idempotency key (24 hours).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# \Z, not $, because $ also matches before a trailing newline ("acme\n" is not a valid id).
ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")


def split_pool(pool: str) -> tuple[str, str | None]:
    """Split a pool id into tenant and team.

    Args:
        pool: ``tenant`` or ``tenant/team``.

    Returns:
        The tenant id and the team id, or None for a tenant pool.

    Raises:
        ValueError: when either part does not match ``ID_PATTERN``.
    """
    parts = pool.split("/")
    if len(parts) > 2 or not all(ID_PATTERN.match(part) for part in parts):
        raise ValueError(
            f"invalid pool id {pool!r}: use 'tenant' or 'tenant/team', each part "
            "1-64 characters of letters, digits, '.', '_' or '-'"
        )
    return parts[0], parts[1] if len(parts) == 2 else None


def tenant_of(pool: str) -> str:
    """Return the tenant id of a validated pool id."""
    return split_pool(pool)[0]


@dataclass(frozen=True, slots=True)
class PoolKeys:
    """The three keys that hold one pool's state."""

    pool: str
    settings: str
    grants: str
    grant_fields: str

    def as_list(self) -> list[str]:
        return [self.settings, self.grants, self.grant_fields]


class KeyBuilder:
    """Builds the key names of one deployment from its prefix.

    Args:
        prefix: ``redis.key_prefix`` from the config, ``gk`` by default.
    """

    def __init__(self, prefix: str = "gk") -> None:
        self.prefix = prefix

    def _tenant_key(self, tenant: str, kind: str) -> str:
        return f"{self.prefix}:{{{tenant}}}:{kind}"

    def pool(self, pool: str) -> PoolKeys:
        """Return the keys of a pool, validating its id."""
        tenant = tenant_of(pool)
        return PoolKeys(
            pool=pool,
            settings=self._tenant_key(tenant, f"pool:{pool}"),
            grants=self._tenant_key(tenant, f"grants:{pool}"),
            grant_fields=self._tenant_key(tenant, f"grant:{pool}"),
        )

    def pools(self, tenant: str) -> str:
        return self._tenant_key(tenant, "pools")

    def usage(self, tenant: str) -> str:
        return self._tenant_key(tenant, "usage")

    def usage_index(self, tenant: str) -> str:
        return self._tenant_key(tenant, "usage-index")

    def audit(self, tenant: str) -> str:
        return self._tenant_key(tenant, "audit")

    def charge(self, tenant: str, charge_id: str) -> str:
        return self._tenant_key(tenant, f"charge:{charge_id}")

    def idempotency(self, tenant: str, key: str) -> str:
        return self._tenant_key(tenant, f"idem:{key}")

    def operation(self, tenant: str, key: str) -> str:
        return self._tenant_key(tenant, f"op:{key}")

"""Mint HS* tokens for the demo, the tests and the ``gatekeeper token`` command.

The tokens carry the claims an issuer with ``secret_env`` checks: ``exp`` and ``iat``,
the tenant (and team) at the configured claim paths, and the scopes as a space-separated
string. A dotted claim path such as ``org.id`` becomes a nested JSON object.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import Any

import jwt

from gatekeeper.auth.identity import ID_RULE
from gatekeeper.auth.keyfiles import validate_hmac_secret
from gatekeeper.auth.keys import HMAC_ALGORITHMS
from gatekeeper.config.model import ID_PATTERN


def mint_token(
    secret: str,
    *,
    tenant: str,
    team: str | None = None,
    scopes: Iterable[str] = (),
    ttl_s: float = 3600,
    issuer: str | None = None,
    audience: str | Sequence[str] | None = None,
    algorithm: str = "HS256",
    tenant_claim: str = "tenant_id",
    team_claim: str | None = None,
    scope_claim: str = "scope",
    now: float | None = None,
) -> str:
    """Sign a token that an issuer configured with ``secret_env`` accepts.

    Args:
        secret: the HMAC secret, the same value as the issuer's ``secret_env`` variable.
        tenant: the tenant id.
        team: the team id, if any.
        scopes: scopes to grant, written space-separated to ``scope_claim``.
        ttl_s: seconds from ``now`` until the token expires.
        issuer: the ``iss`` claim, if any.
        audience: the ``aud`` claim, if any.
        algorithm: HS256, HS384 or HS512.
        tenant_claim: claim path of the tenant id, like the issuer's ``tenant_claim``.
        team_claim: claim path of the team id, like the issuer's ``team_claim``; ``team``
            when None.
        scope_claim: claim path of the scopes, like the issuer's ``scope_claim``.
        now: the issue time in seconds since the epoch; defaults to the current time.

    Returns:
        The compact JWS.

    Raises:
        ValueError: for an unsupported algorithm, a secret the gateway would reject, an
            invalid tenant or team id, or ``ttl_s`` <= 0.
    """
    if algorithm not in HMAC_ALGORITHMS:
        raise ValueError(f"algorithm {algorithm!r} is not supported. Use HS256, HS384 or HS512.")
    key = secret.encode("utf-8", "surrogateescape")  # the same bytes load_secret uses
    validate_hmac_secret(key, [algorithm], source="the secret")
    if ttl_s <= 0:
        raise ValueError(f"ttl_s must be positive, got {ttl_s}")
    for kind, value in (("tenant", tenant), ("team", team)):
        if value is not None and not ID_PATTERN.fullmatch(value):
            raise ValueError(f"the {kind} id {value!r} is invalid. Use {ID_RULE}.")

    issued_at = time.time() if now is None else now
    claims: dict[str, Any] = {"iat": int(issued_at), "exp": int(issued_at + ttl_s)}
    _set_claim(claims, tenant_claim, tenant)
    if team is not None:
        _set_claim(claims, team_claim or "team", team)
    scope_list = list(scopes)
    if scope_list:
        _set_claim(claims, scope_claim, " ".join(scope_list))
    if issuer is not None:
        claims["iss"] = issuer
    if audience is not None:
        claims["aud"] = audience if isinstance(audience, str) else list(audience)
    return jwt.encode(claims, key, algorithm=algorithm)


def _set_claim(claims: dict[str, Any], path: str, value: str) -> None:
    *parents, name = path.split(".")
    node = claims
    for parent in parents:
        node = node.setdefault(parent, {})
    node[name] = value

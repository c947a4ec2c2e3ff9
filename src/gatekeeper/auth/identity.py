"""The caller's identity taken from verified claims, and the scope check routes apply.

Tenant and team come only from the token. They must match ``ID_PATTERN`` exactly, so they
can be used in Redis keys and pool names without escaping. A token with another value gets
401. Claim paths are dotted (``org.id`` reads ``{"org": {"id": ...}}``), but a top-level
claim whose name is the whole path wins, so namespaced claims such as
``https://example.com/tenant`` work as written.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from gatekeeper.config.model import ID_PATTERN, JwtIssuer
from gatekeeper.errors import Forbidden, InvalidToken

ID_RULE = "1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit"


@dataclass(frozen=True, slots=True)
class Identity:
    """The caller, as stated by a verified token.

    Attributes:
        tenant: the tenant id, which names the tenant's pool.
        team: the team id within the tenant, if the issuer maps a team claim and the
            token has one.
        scopes: the scopes the token grants.
        subject: the ``sub`` claim, if present.
        issuer: the ``iss`` claim, if present.
        expires_at: the ``exp`` claim, in seconds since the epoch.
    """

    tenant: str
    team: str | None
    scopes: frozenset[str]
    subject: str | None
    issuer: str | None
    expires_at: float


def check_scopes(identity: Identity, required: Iterable[str]) -> None:
    """Raise Forbidden unless the identity has every scope in ``required``.

    Args:
        identity: the authenticated caller.
        required: the scopes the route requires.

    Raises:
        Forbidden: whose detail and ``missing_scopes`` member name each missing scope.
    """
    needed = tuple(dict.fromkeys(required))
    missing = [scope for scope in needed if scope not in identity.scopes]
    if missing:
        raise Forbidden(
            f"The token lacks the required scope(s): {' '.join(missing)}.",
            required_scopes=needed,
            missing_scopes=missing,
        )


def lookup_claim(claims: Mapping[str, Any], path: str) -> Any:
    """Return the claim at a dotted ``path``, or None when any step is missing."""
    if path in claims:
        return claims[path]
    node: Any = claims
    for name in path.split("."):
        if not isinstance(node, Mapping) or name not in node:
            return None
        node = node[name]
    return node


def build_identity(claims: Mapping[str, Any], config: JwtIssuer, expires_at: float) -> Identity:
    """Map verified claims to an Identity by the issuer's claim settings.

    Raises:
        InvalidToken: when the tenant is missing, or the tenant, team or scopes are invalid.
    """
    tenant = _read_id(claims, config.tenant_claim, "tenant")
    if tenant is None:
        raise InvalidToken(f"The token lacks the tenant claim {config.tenant_claim!r}.")
    team = _read_id(claims, config.team_claim, "team") if config.team_claim else None

    subject = claims.get("sub")
    issuer = claims.get("iss")
    return Identity(
        tenant=tenant,
        team=team,
        scopes=read_scopes(claims, config.scope_claim),
        subject=subject if isinstance(subject, str) else None,
        issuer=issuer if isinstance(issuer, str) else None,
        expires_at=expires_at,
    )


def _read_id(claims: Mapping[str, Any], path: str, kind: str) -> str | None:
    value = lookup_claim(claims, path)
    if value is None:
        return None
    # fullmatch, because ID_PATTERN's "$" also matches before a trailing newline.
    if not isinstance(value, str) or not ID_PATTERN.fullmatch(value):
        raise InvalidToken(f"The token's {kind} claim {path!r} is not an id of {ID_RULE}.")
    return value


def read_scopes(claims: Mapping[str, Any], path: str) -> frozenset[str]:
    """Return the scopes from the claim at ``path``, or from ``scp`` when that is absent.

    Either claim may be a space-separated string (OAuth 2.0 ``scope``) or a list of
    strings (``scp`` as some IdPs send it).

    Raises:
        InvalidToken: when the claim has another type.
    """
    name = path
    value = lookup_claim(claims, path)
    if value is None:
        name, value = "scp", claims.get("scp")
    if value is None:
        return frozenset()
    if isinstance(value, str):
        return frozenset(value.split())
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return frozenset(item for item in value if item)
    raise InvalidToken(
        f"The token's scope claim {name!r} must be a space-separated string or a list of strings."
    )

"""mint_token: tokens the gateway accepts, and the inputs it rejects."""

from __future__ import annotations

import pytest

from gatekeeper.auth import Authenticator
from gatekeeper.auth.mint import mint_token
from tests.auth_support import ENV, NOW, SECRET, FakeClock, bearer, secret_issuer


async def test_mint_round_trip() -> None:
    issuer = secret_issuer(
        issuer="https://demo.test",
        audience="gateway",
        algorithms=["HS384"],
        tenant_claim="org.id",
        team_claim="org.team",
    )
    authenticator = Authenticator([issuer], env=ENV, clock=FakeClock())
    token = mint_token(
        SECRET,
        tenant="acme",
        team="ml",
        scopes=["read", "write"],
        ttl_s=600,
        issuer="https://demo.test",
        audience="gateway",
        algorithm="HS384",
        tenant_claim="org.id",
        team_claim="org.team",
        now=NOW,
    )

    identity = await authenticator.authenticate(bearer(token))

    assert identity.tenant == "acme"
    assert identity.team == "ml"
    assert identity.scopes == {"read", "write"}
    assert identity.expires_at == NOW + 600


async def test_mint_team_default_claim() -> None:
    authenticator = Authenticator([secret_issuer(team_claim="team")], env=ENV, clock=FakeClock())

    identity = await authenticator.authenticate(
        bearer(mint_token(SECRET, tenant="acme", team="ml", now=NOW))
    )

    assert identity.team == "ml"


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"tenant": "acme/ops"}, "tenant id"),
        ({"tenant": "acme", "team": "{x}"}, "team id"),
        ({"tenant": "acme", "algorithm": "RS256"}, "not supported"),
        ({"tenant": "acme", "ttl_s": 0}, "ttl_s must be positive"),
    ],
)
def test_mint_rejects_input(arguments: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        mint_token(SECRET, **arguments)  # type: ignore[arg-type]


def test_mint_rejects_short_secret() -> None:
    with pytest.raises(ValueError, match="at least 32 bytes"):
        mint_token("short", tenant="acme")

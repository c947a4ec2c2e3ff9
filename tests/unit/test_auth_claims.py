"""Claims: exp, nbf and iat against the clock, iss and aud, claim types, tenant and team."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import ValidationError

from gatekeeper import errors
from gatekeeper.auth import Authenticator, Identity
from gatekeeper.config import parse_config
from gatekeeper.errors import ConfigError
from tests.auth_support import (
    DROP,
    ENV,
    NOW,
    SECRET,
    FakeClock,
    b64url,
    bearer,
    claims,
    forge,
    secret_issuer,
    sign,
)


async def authenticate(token: str, clock: FakeClock | None = None, **fields: Any) -> Identity:
    authenticator = Authenticator([secret_issuer(**fields)], env=ENV, clock=clock or FakeClock())
    return await authenticator.authenticate(bearer(token))


def signed_raw(payload_json: str) -> str:
    """Sign claims given as raw JSON text, for values json.dumps would not write."""
    import hashlib
    import hmac

    signing_input = b64url(b'{"alg":"HS256","typ":"JWT"}') + "." + b64url(payload_json.encode())
    signature = hmac.new(SECRET.encode(), signing_input.encode(), hashlib.sha256).digest()
    return signing_input + "." + b64url(signature)


async def test_exp_required() -> None:
    with pytest.raises(errors.InvalidToken, match="lacks the required exp claim"):
        await authenticate(sign(claims(exp=DROP)))


def test_config_dropping_exp_rejected() -> None:
    with pytest.raises(ValidationError, match="must include 'exp'"):
        secret_issuer(required_claims=["sub"])


def test_config_file_dropping_exp_rejected() -> None:
    text = "auth: {jwt: {algorithms: [HS256], secret_env: S, required_claims: [sub]}}"

    with pytest.raises(ConfigError, match=r"auth\.jwt\.required_claims: must include 'exp'"):
        parse_config(text)


async def test_required_claims_enforced() -> None:
    with pytest.raises(errors.InvalidToken, match="lacks the required sub claim"):
        await authenticate(sign(claims()), required_claims=["exp", "sub"])


async def test_expired_rejected() -> None:
    clock = FakeClock(NOW + 3600 + 31)

    with pytest.raises(errors.InvalidToken, match="has expired"):
        await authenticate(sign(claims()), clock)


async def test_expired_within_leeway_accepted() -> None:
    clock = FakeClock(NOW + 3600 + 29)

    identity = await authenticate(sign(claims()), clock)

    assert identity.expires_at == NOW + 3600


async def test_nbf_future_beyond_leeway_rejected() -> None:
    with pytest.raises(errors.InvalidToken, match="nbf claim is in the future"):
        await authenticate(sign(claims(nbf=int(NOW) + 31)))


async def test_nbf_future_within_leeway_accepted() -> None:
    identity = await authenticate(sign(claims(nbf=int(NOW) + 29)))

    assert identity.tenant == "acme"


async def test_iat_future_beyond_leeway_rejected() -> None:
    with pytest.raises(errors.InvalidToken, match="iat claim is in the future"):
        await authenticate(sign(claims(iat=int(NOW) + 31)))


async def test_leeway_setting_applies() -> None:
    with pytest.raises(errors.InvalidToken, match="nbf claim is in the future"):
        await authenticate(sign(claims(nbf=int(NOW) + 6)), leeway_s=5)


async def test_issuer_enforced() -> None:
    with pytest.raises(errors.InvalidToken, match="issuer"):
        await authenticate(sign(claims(iss="https://other.test")), issuer="https://idp.test")


async def test_issuer_missing_rejected() -> None:
    with pytest.raises(errors.InvalidToken, match="iss"):
        await authenticate(sign(claims()), issuer="https://idp.test")


async def test_issuer_matching_accepted() -> None:
    token = sign(claims(iss="https://idp.test"))

    identity = await authenticate(token, issuer="https://idp.test")

    assert identity.issuer == "https://idp.test"


async def test_audience_enforced() -> None:
    with pytest.raises(errors.InvalidToken, match="audience"):
        await authenticate(sign(claims(aud="other")), audience="api")


async def test_audience_missing_rejected() -> None:
    with pytest.raises(errors.InvalidToken, match="lacks the required aud claim"):
        await authenticate(sign(claims()), audience="api")


async def test_audience_in_list_accepted() -> None:
    identity = await authenticate(sign(claims(aud=["web", "api"])), audience=["api", "admin"])

    assert identity.tenant == "acme"


async def test_audience_unchecked_when_unset() -> None:
    identity = await authenticate(sign(claims(aud="anything")))

    assert identity.tenant == "acme"


@pytest.mark.parametrize(
    "payload",
    [
        {"exp": str(int(NOW) + 3600)},
        {"exp": True},
        {"exp": [int(NOW) + 3600]},
        {"exp": {"at": int(NOW) + 3600}},
        {"nbf": "0"},
        {"iat": "now"},
        {"iss": 7},
        {"aud": 7},
        {"aud": ["api", 7]},
        {"sub": 42},
        {"jti": ["x"]},
    ],
    ids=lambda payload: json.dumps(payload),
)
async def test_wrong_claim_type_rejected(payload: dict[str, Any]) -> None:
    # forge, because PyJWT refuses to encode some of these claims.
    token = forge({"alg": "HS256", "typ": "JWT"}, claims(**payload), SECRET.encode())

    with pytest.raises(errors.InvalidToken):
        await authenticate(token)


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity", "1e400", "1" + "0" * 400])
async def test_exp_not_finite_rejected(value: str) -> None:
    token = signed_raw(f'{{"tenant_id": "acme", "exp": {value}}}')

    with pytest.raises(errors.InvalidToken, match="exp"):
        await authenticate(token)


async def test_float_exp_accepted() -> None:
    identity = await authenticate(sign(claims(exp=NOW + 10.5)))

    assert identity.expires_at == NOW + 10.5


@pytest.mark.parametrize(
    "tenant",
    [
        "",
        "-acme",
        ".acme",
        "acme/ops",
        "{tenant}",
        "ac me",
        "acme\n",
        "acmé",
        "a" * 65,
        "acme%2F",
        7,
        None,
        ["acme"],
        {"id": "acme"},
    ],
    ids=repr,
)
async def test_invalid_tenant_rejected(tenant: Any) -> None:
    with pytest.raises(errors.InvalidToken, match="tenant"):
        await authenticate(sign(claims(tenant_id=tenant)))


@pytest.mark.parametrize("tenant", ["a", "Acme", "acme-01", "acme_01.eu", "9" + "x" * 63])
async def test_valid_tenant_accepted(tenant: str) -> None:
    identity = await authenticate(sign(claims(tenant_id=tenant)))

    assert identity.tenant == tenant


async def test_tenant_missing_rejected() -> None:
    with pytest.raises(errors.InvalidToken, match="lacks the tenant claim 'tenant_id'"):
        await authenticate(sign(claims(tenant_id=DROP)))


async def test_tenant_dotted_path() -> None:
    token = sign(claims(tenant_id=DROP, org={"id": "acme", "team": "ml"}))

    identity = await authenticate(token, tenant_claim="org.id", team_claim="org.team")

    assert identity.tenant == "acme"
    assert identity.team == "ml"


async def test_tenant_namespaced_claim() -> None:
    name = "https://example.com/tenant"
    token = sign(claims(tenant_id=DROP, **{name: "acme"}))

    identity = await authenticate(token, tenant_claim=name)

    assert identity.tenant == "acme"


@pytest.mark.parametrize("team", ["", "ml/ops", "{team}", "x" * 65, 3, ["ml"]], ids=repr)
async def test_invalid_team_rejected(team: Any) -> None:
    with pytest.raises(errors.InvalidToken, match="team"):
        await authenticate(sign(claims(team=team)), team_claim="team")


async def test_team_absent_is_none() -> None:
    identity = await authenticate(sign(claims()), team_claim="team")

    assert identity.team is None


async def test_team_ignored_without_team_claim() -> None:
    identity = await authenticate(sign(claims(team="ml")))

    assert identity.team is None


async def test_tenant_in_jose_header_ignored() -> None:
    token = sign(claims(), headers={"tenant_id": "evil", "team": "evil"})

    identity = await authenticate(token, team_claim="team")

    assert identity.tenant == "acme"
    assert identity.team is None


async def test_unsigned_claims_cannot_set_tenant() -> None:
    good = sign(claims())
    header, _, signature = good.split(".")
    swapped = f"{header}.{b64url(json.dumps(claims(tenant_id='evil')).encode())}.{signature}"

    with pytest.raises(errors.InvalidToken, match="signature is invalid"):
        await authenticate(swapped)


async def test_identity_fields() -> None:
    token = forge(
        {"alg": "HS256", "typ": "JWT"},
        claims(sub="user-1", iss="https://idp.test", scope="read write"),
        SECRET.encode(),
    )

    identity = await authenticate(token)

    assert identity == Identity(
        tenant="acme",
        team=None,
        scopes=frozenset({"read", "write"}),
        subject="user-1",
        issuer="https://idp.test",
        expires_at=NOW + 3600,
    )

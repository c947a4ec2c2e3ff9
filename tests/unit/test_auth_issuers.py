"""Several issuers, each with its own keys, audience and claim mapping, selected by ``iss``."""

from __future__ import annotations

from pathlib import Path

import pytest

from gatekeeper import errors
from gatekeeper.auth import Authenticator
from gatekeeper.config.model import JwtIssuer
from tests.auth_support import (
    DROP,
    ENV,
    SECRET,
    FakeClock,
    bearer,
    claims,
    forge,
    public_pem,
    rsa_key,
    secret_issuer,
    sign,
)

PARTNER = "https://partner.test"
STAFF = "https://staff.test"


@pytest.fixture
def authenticator(tmp_path: Path) -> Authenticator:
    path = tmp_path / "partner.pem"
    path.write_bytes(public_pem(rsa_key(0)))
    partner = JwtIssuer(
        issuer=PARTNER,
        audience="gateway",
        algorithms=["RS256"],
        public_key_file=str(path),
        tenant_claim="org.id",
        scope_claim="permissions",
    )
    staff = secret_issuer(issuer=STAFF, tenant_claim="tenant", team_claim="team")
    return Authenticator([partner, staff], env=ENV, clock=FakeClock())


def partner_token(**overrides: object) -> str:
    payload = claims(
        tenant_id=DROP, iss=PARTNER, aud="gateway", org={"id": "acme"}, permissions="read"
    )
    payload.update(overrides)
    return sign(payload, rsa_key(0), "RS256")


def staff_token(**overrides: object) -> str:
    payload = claims(iss=STAFF, tenant="ops", team="sre")
    payload.update(overrides)
    return sign(payload)


async def test_partner_mapping(authenticator: Authenticator) -> None:
    identity = await authenticator.authenticate(bearer(partner_token()))

    assert identity.tenant == "acme"
    assert identity.scopes == frozenset({"read"})
    assert identity.issuer == PARTNER


async def test_staff_mapping(authenticator: Authenticator) -> None:
    identity = await authenticator.authenticate(bearer(staff_token()))

    assert identity.tenant == "ops"
    assert identity.team == "sre"
    assert identity.issuer == STAFF


async def test_unknown_issuer_rejected(authenticator: Authenticator) -> None:
    with pytest.raises(errors.InvalidToken, match="issuer"):
        await authenticator.authenticate(bearer(staff_token(iss="https://other.test")))


async def test_missing_issuer_rejected(authenticator: Authenticator) -> None:
    token = sign(claims(tenant="ops"))

    with pytest.raises(errors.InvalidToken, match="iss"):
        await authenticator.authenticate(bearer(token))


async def test_non_string_issuer_rejected(authenticator: Authenticator) -> None:
    token = forge({"alg": "HS256"}, claims(iss=["https://staff.test"]), SECRET.encode())

    with pytest.raises(errors.InvalidToken, match="iss"):
        await authenticator.authenticate(bearer(token))


async def test_partner_audience_enforced(authenticator: Authenticator) -> None:
    with pytest.raises(errors.InvalidToken, match="audience"):
        await authenticator.authenticate(bearer(partner_token(aud="elsewhere")))


async def test_other_issuers_key_rejected(authenticator: Authenticator) -> None:
    # Signed with the staff secret but claiming the partner issuer, whose allow-list is RS256.
    token = sign(claims(iss=PARTNER, aud="gateway", org={"id": "acme"}))

    with pytest.raises(errors.InvalidToken, match="alg is not allowed"):
        await authenticator.authenticate(bearer(token))


async def test_single_issuer_without_iss_setting() -> None:
    authenticator = Authenticator([secret_issuer()], env=ENV, clock=FakeClock())

    identity = await authenticator.authenticate(bearer(sign(claims(iss="https://any.test"))))

    assert identity.issuer == "https://any.test"


async def test_no_issuers_rejects_tokens() -> None:
    authenticator = Authenticator([], env=ENV, clock=FakeClock())

    with pytest.raises(errors.InvalidToken, match="no issuer"):
        await authenticator.authenticate(bearer(sign(claims())))


def test_duplicate_issuers_rejected() -> None:
    issuers = [secret_issuer(issuer=STAFF), secret_issuer(issuer=STAFF)]

    with pytest.raises(ValueError, match="configured twice"):
        Authenticator(issuers, env=ENV)


def test_several_issuers_need_iss() -> None:
    issuers = [secret_issuer(issuer=STAFF), secret_issuer()]

    with pytest.raises(ValueError, match="each needs 'issuer'"):
        Authenticator(issuers, env=ENV)

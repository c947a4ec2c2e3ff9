"""The Authorization header: missing and malformed tokens, and what 401 responses carry."""

from __future__ import annotations

import pytest

from gatekeeper import errors
from gatekeeper.auth import Authenticator
from tests.auth_support import ENV, FakeClock, bearer, claims, secret_issuer, sign


@pytest.fixture
def authenticator() -> Authenticator:
    return Authenticator([secret_issuer()], env=ENV, clock=FakeClock())


@pytest.mark.parametrize("header", [None, "", "   ", "Bearer", "Bearer    "])
async def test_missing_token_challenge(authenticator: Authenticator, header: str | None) -> None:
    with pytest.raises(errors.MissingToken) as caught:
        await authenticator.authenticate(header)

    assert caught.value.status == 401
    assert caught.value.headers["WWW-Authenticate"] == 'Bearer realm="gatekeeper"'


@pytest.mark.parametrize("header", ["Basic YWxhZGRpbjpvcGVuc2VzYW1l", "Token abc.def.ghi"])
async def test_other_scheme_is_missing_token(authenticator: Authenticator, header: str) -> None:
    with pytest.raises(errors.MissingToken):
        await authenticator.authenticate(header)


async def test_scheme_case_insensitive(authenticator: Authenticator) -> None:
    identity = await authenticator.authenticate("bearer " + sign(claims()))

    assert identity.tenant == "acme"


@pytest.mark.parametrize(
    "token",
    [
        "not-a-jwt",
        "a.b",
        "a.b.c.d",
        "a..c",
        "a.b.",
        "eyJhbGciOiJIUzI1NiJ9.e30.c2ln extra",
        "ä.b.c",
        "e30.W10.c2ln",  # payload is a JSON list
        "W10.e30.c2ln",  # header is a JSON list
        "e30.bm90IGpzb24.c2ln",  # payload is not JSON
        "e30.e30x.c2ln",  # payload is not valid base64url
    ],
)
async def test_malformed_token_invalid(authenticator: Authenticator, token: str) -> None:
    with pytest.raises(errors.InvalidToken) as caught:
        await authenticator.authenticate(bearer(token))

    challenge = caught.value.headers["WWW-Authenticate"]
    assert challenge.startswith('Bearer realm="gatekeeper", error="invalid_token"')


async def test_long_token_rejected(authenticator: Authenticator) -> None:
    token = f"{'a' * 9000}.{'b' * 9000}.c"

    with pytest.raises(errors.InvalidToken, match="longer than 16384 characters"):
        await authenticator.authenticate(bearer(token))


async def test_detail_never_echoes_token(authenticator: Authenticator) -> None:
    secret_looking = "tenant-" + "Q" * 40
    tokens = [
        sign(claims(tenant_id=secret_looking + "/x")),
        sign(claims(exp=int(1e9))),
        sign(claims(), "another-secret-of-sufficient-length-0123456789"),
        sign(claims(), headers={"alg": "HS384", "kid": secret_looking}),
        sign(claims(), headers={"crit": [secret_looking], secret_looking: 1}),
    ]
    for token in tokens:
        with pytest.raises(errors.InvalidToken) as caught:
            await authenticator.authenticate(bearer(token))
        shown = caught.value.detail + caught.value.headers["WWW-Authenticate"]
        assert secret_looking not in shown
        for segment in token.split("."):
            assert segment not in shown


def test_invalid_token_challenge_stays_one_header_line() -> None:
    error = errors.InvalidToken('bad "quote" \\ and\r\nSet-Cookie: x=1 é')

    challenge = error.headers["WWW-Authenticate"]
    assert "\r" not in challenge
    assert "\n" not in challenge
    assert challenge.count('"') == 6  # realm, error and error_description
    assert challenge.isascii()


async def test_authorization_extras_rejected(authenticator: Authenticator) -> None:
    token = sign(claims())

    with pytest.raises(errors.InvalidToken):
        await authenticator.authenticate(f"Bearer {token} tenant_id=evil")

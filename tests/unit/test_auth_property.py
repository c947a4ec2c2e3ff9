"""Property: any Authorization header yields an Identity, MissingToken or InvalidToken.

The inputs mix random text, validly signed tokens with random headers and claims (so claim
checks see every JSON type, NaN and huge numbers included), and valid tokens with random
mutations. Any other exception would become a 500 in the gateway.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gatekeeper import errors
from gatekeeper.auth import Authenticator
from gatekeeper.config.model import ID_PATTERN, JwtIssuer
from tests.auth_support import (
    ENV,
    NOW,
    SECRET,
    FakeClock,
    b64url,
    claims,
    forge,
    public_pem,
    rsa_key,
    secret_issuer,
    sign,
)

BASE64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
CLAIM_NAMES = [
    "exp", "nbf", "iat", "iss", "aud", "sub", "jti", "tenant_id", "team", "scope", "scp", "org",
]
HEADER_NAMES = ["alg", "kid", "typ", "crit", "b64", "jku", "x5u", "jwk"]

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats()
    | st.integers(min_value=int(NOW) - 10**5, max_value=int(NOW) + 10**5)
    | st.text(max_size=70),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=6) | st.sampled_from(["id", "team"]), children, max_size=4),
    max_leaves=10,
)

claim_sets = st.builds(
    lambda extra, iss: {**claims(), **extra, **iss},
    st.dictionaries(st.sampled_from(CLAIM_NAMES) | st.text(max_size=6), json_values, max_size=6),
    st.sampled_from([{}, {"iss": "hs"}, {"iss": "rs"}, {"iss": 1}]),
)

jose_headers = st.builds(
    lambda alg, extra: {"alg": alg, **extra},
    st.sampled_from(["HS256", "HS384", "RS256", "none", "NONE", "", "ES256"]) | json_values,
    st.dictionaries(st.sampled_from(HEADER_NAMES), json_values, max_size=3),
)


@st.composite
def hmac_tokens(draw: st.DrawFn) -> str:
    return forge(draw(jose_headers), draw(claim_sets), SECRET.encode())


@st.composite
def rsa_tokens(draw: st.DrawFn) -> str:
    payload = {**draw(claim_sets), "iss": "rs"}
    return sign(payload, rsa_key(0), draw(st.sampled_from(["RS256", "PS256"])))


@st.composite
def mutated_tokens(draw: st.DrawFn) -> str:
    valid = [sign(claims(iss="hs")), sign(claims(iss="rs"), rsa_key(0), "RS256")]
    token = draw(st.sampled_from(valid))
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        position = draw(st.integers(min_value=0, max_value=len(token)))
        action = draw(st.sampled_from(["replace", "insert", "delete", "swap", "payload"]))
        if action == "replace" and position < len(token):
            token = token[:position] + draw(st.sampled_from(BASE64URL + ".")) + token[position + 1:]
        elif action == "insert":
            token = token[:position] + draw(st.text(BASE64URL + ".", max_size=3)) + token[position:]
        elif action == "delete":
            token = token[:position] + token[position + 1:]
        elif action == "swap":
            token = ".".join(reversed(token.split(".")))
        elif action == "payload":
            header = token.split(".")[0]
            signature = token.rsplit(".", 1)[-1]
            payload = b64url(json.dumps(draw(claim_sets), default=str).encode())
            token = f"{header}.{payload}.{signature}"
    return token


tokens = hmac_tokens() | rsa_tokens() | mutated_tokens() | st.text(BASE64URL + ".", max_size=80)
authorization_headers = (
    st.none()
    | st.text(max_size=40)
    | tokens.map(lambda token: f"Bearer {token}")
    | st.tuples(st.sampled_from(["bearer", "BEARER", "Basic", "Bearer  "]), tokens).map(" ".join)
)


@pytest.fixture(scope="module")
def authenticator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Authenticator]:
    path: Path = tmp_path_factory.mktemp("keys") / "rs.pem"
    path.write_bytes(public_pem(rsa_key(0)))
    issuers = [
        secret_issuer(issuer="hs", team_claim="team"),
        JwtIssuer(
            issuer="rs", algorithms=["RS256", "PS256"], public_key_file=str(path),
            tenant_claim="org.id", scope_claim="scp",
        ),
    ]
    yield Authenticator(issuers, env=ENV, clock=FakeClock(), cache_size=16)


@settings(
    max_examples=500,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(header=authorization_headers)
def test_authenticate_raises_only_401(authenticator: Authenticator, header: Any) -> None:
    try:
        identity = asyncio.run(authenticator.authenticate(header))
    except (errors.MissingToken, errors.InvalidToken):
        return

    assert ID_PATTERN.fullmatch(identity.tenant)
    assert identity.team is None or ID_PATTERN.fullmatch(identity.team)

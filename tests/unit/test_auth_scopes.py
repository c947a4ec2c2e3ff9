"""Scopes: read from the scope claim or ``scp``, and checked against a route's requirements."""

from __future__ import annotations

from typing import Any

import pytest

from gatekeeper import errors
from gatekeeper.auth import Authenticator, Identity, check_scopes
from tests.auth_support import ENV, NOW, FakeClock, bearer, claims, secret_issuer, sign


async def scopes_of(payload: dict[str, Any], **fields: Any) -> frozenset[str]:
    authenticator = Authenticator([secret_issuer(**fields)], env=ENV, clock=FakeClock())
    identity = await authenticator.authenticate(bearer(sign(payload)))
    return identity.scopes


def identity_with(*scopes: str) -> Identity:
    return Identity("acme", None, frozenset(scopes), None, None, NOW + 60)


async def test_scope_string_split() -> None:
    assert await scopes_of(claims(scope="read  write")) == {"read", "write"}


async def test_scp_list() -> None:
    assert await scopes_of(claims(scp=["read", "write"])) == {"read", "write"}


async def test_scp_string() -> None:
    assert await scopes_of(claims(scp="read write")) == {"read", "write"}


async def test_scope_claim_preferred_over_scp() -> None:
    assert await scopes_of(claims(scope="read", scp=["admin"])) == {"read"}


async def test_custom_scope_claim() -> None:
    payload = claims(authz={"perms": "reports:read"})

    assert await scopes_of(payload, scope_claim="authz.perms") == {"reports:read"}


async def test_no_scopes_empty() -> None:
    assert await scopes_of(claims()) == frozenset()


@pytest.mark.parametrize("value", [7, {"read": True}, ["read", 7], True], ids=repr)
async def test_scope_wrong_type_rejected(value: Any) -> None:
    with pytest.raises(errors.InvalidToken, match="scope claim"):
        await scopes_of(claims(scope=value))


@pytest.mark.parametrize("value", [7, {"read": True}, [["read"]]], ids=repr)
async def test_scp_wrong_type_rejected(value: Any) -> None:
    with pytest.raises(errors.InvalidToken, match="scope claim 'scp'"):
        await scopes_of(claims(scp=value))


def test_check_scopes_passes() -> None:
    check_scopes(identity_with("read", "write"), ["read"])


def test_check_scopes_names_missing() -> None:
    with pytest.raises(errors.Forbidden) as caught:
        check_scopes(identity_with("read"), ["read", "write", "admin"])

    assert caught.value.status == 403
    assert caught.value.detail == "The token lacks the required scope(s): write admin."
    assert caught.value.problem()["missing_scopes"] == ["write", "admin"]


def test_check_scopes_challenge() -> None:
    with pytest.raises(errors.Forbidden) as caught:
        check_scopes(identity_with(), ["reports:read"])

    challenge = caught.value.headers["WWW-Authenticate"]
    assert challenge == (
        'Bearer realm="gatekeeper", error="insufficient_scope", scope="reports:read"'
    )


def test_check_scopes_none_required() -> None:
    check_scopes(identity_with(), [])

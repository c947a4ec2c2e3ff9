"""The verified-token cache, measured by counting signature checks, never by timing."""

from __future__ import annotations

import pytest
from jwt.algorithms import HMACAlgorithm

from gatekeeper import errors
from gatekeeper.auth import Authenticator
from gatekeeper.auth.cache import DEFAULT_TOKEN_CACHE_SIZE
from gatekeeper.config.model import Auth
from tests.auth_support import (
    ENV,
    NOW,
    FakeClock,
    bearer,
    claims,
    count_verify_calls,
    secret_issuer,
    sign,
)


@pytest.fixture
def checks(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    return count_verify_calls(monkeypatch, HMACAlgorithm)


def tokens(count: int) -> list[str]:
    return [sign(claims(sub=f"user-{index}")) for index in range(count)]


async def test_repeated_token_checked_once(checks: list[int]) -> None:
    authenticator = Authenticator([secret_issuer()], env=ENV, clock=FakeClock())
    token = sign(claims())

    for _ in range(5):
        await authenticator.authenticate(bearer(token))

    assert len(checks) == 1


async def test_different_token_checked_again(checks: list[int]) -> None:
    authenticator = Authenticator([secret_issuer()], env=ENV, clock=FakeClock())

    for token in tokens(3):
        await authenticator.authenticate(bearer(token))

    assert len(checks) == 3


async def test_cached_token_expires_at_exp(checks: list[int]) -> None:
    clock = FakeClock()
    authenticator = Authenticator([secret_issuer(leeway_s=0)], env=ENV, clock=clock)
    token = sign(claims(exp=int(NOW) + 60))
    await authenticator.authenticate(bearer(token))
    clock.advance(60)

    with pytest.raises(errors.InvalidToken, match="has expired"):
        await authenticator.authenticate(bearer(token))


async def test_cache_rechecks_within_leeway(checks: list[int]) -> None:
    clock = FakeClock()
    authenticator = Authenticator([secret_issuer(leeway_s=30)], env=ENV, clock=clock)
    token = sign(claims(exp=int(NOW) + 60))
    await authenticator.authenticate(bearer(token))
    clock.advance(70)

    identity = await authenticator.authenticate(bearer(token))

    assert identity.tenant == "acme"
    assert len(checks) == 2


async def test_cache_evicts_least_recently_used(checks: list[int]) -> None:
    authenticator = Authenticator([secret_issuer()], env=ENV, clock=FakeClock(), cache_size=2)
    first, second, third = tokens(3)

    for token in (first, second, first, third):  # third evicts second, the least recent
        await authenticator.authenticate(bearer(token))
    assert len(checks) == 3

    await authenticator.authenticate(bearer(first))
    assert len(checks) == 3

    await authenticator.authenticate(bearer(second))
    assert len(checks) == 4


async def test_cache_size_zero_disables(checks: list[int]) -> None:
    authenticator = Authenticator([secret_issuer()], env=ENV, clock=FakeClock(), cache_size=0)
    token = sign(claims())

    for _ in range(3):
        await authenticator.authenticate(bearer(token))

    assert len(checks) == 3


async def test_invalid_token_never_cached(checks: list[int]) -> None:
    authenticator = Authenticator([secret_issuer()], env=ENV, clock=FakeClock())
    token = sign(claims(tenant_id="bad/tenant"))

    for _ in range(2):
        with pytest.raises(errors.InvalidToken):
            await authenticator.authenticate(bearer(token))

    assert len(checks) == 2


def test_config_cache_size_default() -> None:
    assert Auth().token_cache_size == DEFAULT_TOKEN_CACHE_SIZE


def test_negative_cache_size_rejected() -> None:
    with pytest.raises(ValueError, match="0 or more"):
        Authenticator([secret_issuer()], env=ENV, cache_size=-1)

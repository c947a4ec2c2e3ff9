"""JWKS keys from a real HTTP server on 127.0.0.1: caching, refetch limits, rotation, outages.

Time is a `FakeClock` that only the test moves, and fetches are counted at the server,
so every limit is checked by counting, not by waiting.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from jwt.algorithms import RSAAlgorithm
from structlog.testing import capture_logs

from gatekeeper import errors
from gatekeeper.auth import Authenticator, Identity
from gatekeeper.config.model import JwksCache, JwtIssuer
from tests.auth_support import (
    NOW,
    FakeClock,
    bearer,
    claims,
    count_verify_calls,
    public_jwk,
    rsa_key,
    sign,
)
from tests.integration.auth_jwks_server import JwksServer

ServerFactory = Callable[..., Awaitable[TestServer]]


def token(kid: str, key_index: int = 0, **overrides: Any) -> str:
    return sign(claims(**overrides), rsa_key(key_index), "RS256", kid=kid)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def jwks() -> JwksServer:
    server = JwksServer()
    server.keys = [public_jwk(rsa_key(0), kid="k0")]
    return server


@pytest.fixture
async def jwks_http(jwks: JwksServer, aiohttp_server: ServerFactory) -> TestServer:
    return await aiohttp_server(jwks.app())


@pytest.fixture
async def make_authenticator(
    jwks_http: TestServer, clock: FakeClock
) -> AsyncIterator[Callable[..., Authenticator]]:
    created: list[Authenticator] = []

    def make(path: str = "/jwks", **cache: float) -> Authenticator:
        issuer = JwtIssuer(
            algorithms=["RS256"],
            jwks_url=str(jwks_http.make_url(path)),
            jwks_cache=JwksCache(**cache),
        )
        authenticator = Authenticator([issuer], clock=clock)
        created.append(authenticator)
        return authenticator

    yield make
    for authenticator in created:
        await authenticator.close()


async def test_jwks_token_verified(
    make_authenticator: Callable[..., Authenticator], jwks: JwksServer
) -> None:
    identity = await make_authenticator().authenticate(bearer(token("k0")))

    assert identity.tenant == "acme"
    assert jwks.hits == 1


async def test_jwks_cached_for_max_age(
    make_authenticator: Callable[..., Authenticator], jwks: JwksServer, clock: FakeClock
) -> None:
    jwks.cache_control = "public, max-age=120"
    authenticator = make_authenticator()
    await authenticator.authenticate(bearer(token("k0")))

    clock.advance(119)
    await authenticator.authenticate(bearer(token("k0", sub="second")))
    assert jwks.hits == 1

    clock.advance(2)
    await authenticator.authenticate(bearer(token("k0", sub="third")))
    assert jwks.hits == 2


async def test_jwks_max_age_clamped_to_min(
    make_authenticator: Callable[..., Authenticator], jwks: JwksServer, clock: FakeClock
) -> None:
    jwks.cache_control = "max-age=5"
    authenticator = make_authenticator(min_s=60, refetch_s=30)
    await authenticator.authenticate(bearer(token("k0")))

    clock.advance(59)
    await authenticator.authenticate(bearer(token("k0", sub="second")))
    assert jwks.hits == 1

    clock.advance(2)
    await authenticator.authenticate(bearer(token("k0", sub="third")))
    assert jwks.hits == 2


async def test_jwks_max_age_clamped_to_max(
    make_authenticator: Callable[..., Authenticator], jwks: JwksServer, clock: FakeClock
) -> None:
    jwks.cache_control = "max-age=100000"
    authenticator = make_authenticator(max_s=3600)
    long_lived = {"exp": int(NOW) + 100000}
    await authenticator.authenticate(bearer(token("k0", **long_lived)))

    clock.advance(3599)
    await authenticator.authenticate(bearer(token("k0", sub="second", **long_lived)))
    assert jwks.hits == 1

    clock.advance(2)
    await authenticator.authenticate(bearer(token("k0", sub="third", **long_lived)))
    assert jwks.hits == 2


async def test_jwks_without_cache_control_uses_min(
    make_authenticator: Callable[..., Authenticator], jwks: JwksServer, clock: FakeClock
) -> None:
    jwks.cache_control = None
    authenticator = make_authenticator(min_s=60)
    await authenticator.authenticate(bearer(token("k0")))

    clock.advance(61)
    await authenticator.authenticate(bearer(token("k0", sub="second")))

    assert jwks.hits == 2


async def test_unknown_kid_refetch_limited(
    make_authenticator: Callable[..., Authenticator], jwks: JwksServer, clock: FakeClock
) -> None:
    authenticator = make_authenticator(refetch_s=30)
    await authenticator.authenticate(bearer(token("k0")))

    clock.advance(31)
    for index in range(5):
        with pytest.raises(errors.InvalidToken, match="No signing key"):
            await authenticator.authenticate(bearer(token(f"unknown-{index}")))
    assert jwks.hits == 2

    clock.advance(1)
    with pytest.raises(errors.InvalidToken):
        await authenticator.authenticate(bearer(token("unknown-again")))
    assert jwks.hits == 2

    clock.advance(30)
    with pytest.raises(errors.InvalidToken):
        await authenticator.authenticate(bearer(token("unknown-later")))
    assert jwks.hits == 3


async def test_unknown_kid_soon_after_fetch(
    make_authenticator: Callable[..., Authenticator], jwks: JwksServer, clock: FakeClock
) -> None:
    authenticator = make_authenticator(refetch_s=30)
    await authenticator.authenticate(bearer(token("k0")))

    clock.advance(10)
    with pytest.raises(errors.InvalidToken):
        await authenticator.authenticate(bearer(token("unknown")))

    assert jwks.hits == 1


async def test_concurrent_unknown_kids_one_fetch(
    make_authenticator: Callable[..., Authenticator], jwks: JwksServer, clock: FakeClock
) -> None:
    authenticator = make_authenticator(refetch_s=30)
    await authenticator.authenticate(bearer(token("k0")))
    clock.advance(31)

    results = await asyncio.gather(
        *(authenticator.authenticate(bearer(token(f"unknown-{i}"))) for i in range(10)),
        return_exceptions=True,
    )

    assert all(isinstance(result, errors.InvalidToken) for result in results)
    assert jwks.hits == 2


async def test_rotated_key_picked_up(
    make_authenticator: Callable[..., Authenticator], jwks: JwksServer, clock: FakeClock
) -> None:
    authenticator = make_authenticator(refetch_s=30)
    await authenticator.authenticate(bearer(token("k0")))
    jwks.keys.append(public_jwk(rsa_key(1), kid="k1"))
    clock.advance(31)

    identity = await authenticator.authenticate(bearer(token("k1", key_index=1)))

    assert identity.tenant == "acme"
    assert jwks.hits == 2


async def test_removed_key_valid_until_expiry(
    make_authenticator: Callable[..., Authenticator], jwks: JwksServer, clock: FakeClock
) -> None:
    jwks.keys.append(public_jwk(rsa_key(1), kid="k1"))
    authenticator = make_authenticator(min_s=60)
    cached = token("k1", key_index=1)
    await authenticator.authenticate(bearer(cached))
    jwks.keys.pop()

    clock.advance(59)
    again = await authenticator.authenticate(bearer(cached))
    fresh = await authenticator.authenticate(bearer(token("k1", key_index=1, sub="new")))

    assert again.tenant == "acme"
    assert fresh.tenant == "acme"
    assert jwks.hits == 1


async def test_removed_key_rejected_after_expiry(
    make_authenticator: Callable[..., Authenticator], jwks: JwksServer, clock: FakeClock
) -> None:
    jwks.keys.append(public_jwk(rsa_key(1), kid="k1"))
    authenticator = make_authenticator(min_s=60)
    cached = token("k1", key_index=1)
    await authenticator.authenticate(bearer(cached))
    jwks.keys.pop()
    clock.advance(61)

    with pytest.raises(errors.InvalidToken):
        await authenticator.authenticate(bearer(cached))
    with pytest.raises(errors.InvalidToken):
        await authenticator.authenticate(bearer(token("k1", key_index=1, sub="new")))
    assert jwks.hits == 2


async def test_idp_error_serves_stale_keys(
    make_authenticator: Callable[..., Authenticator], jwks: JwksServer, clock: FakeClock
) -> None:
    authenticator = make_authenticator(min_s=60, max_stale_s=600)
    await authenticator.authenticate(bearer(token("k0")))
    jwks.status = 503

    clock.advance(61 + 598)  # 599 s after the keys stopped being fresh
    identity = await authenticator.authenticate(bearer(token("k0", sub="stale")))

    assert identity.tenant == "acme"
    assert jwks.hits == 2


async def test_idp_error_beyond_max_stale(
    make_authenticator: Callable[..., Authenticator], jwks: JwksServer, clock: FakeClock
) -> None:
    authenticator = make_authenticator(min_s=60, max_stale_s=600)
    cached = token("k0")
    await authenticator.authenticate(bearer(cached))
    jwks.status = 503

    clock.advance(60 + 601)
    with pytest.raises(errors.InvalidToken, match="could not be fetched"):
        await authenticator.authenticate(bearer(cached))
    with pytest.raises(errors.InvalidToken, match="could not be fetched"):
        await authenticator.authenticate(bearer(token("k0", sub="new")))


async def test_idp_down_serves_stale_keys(
    make_authenticator: Callable[..., Authenticator], jwks_http: TestServer, clock: FakeClock
) -> None:
    authenticator = make_authenticator(min_s=60, max_stale_s=600)
    await authenticator.authenticate(bearer(token("k0")))
    await jwks_http.close()

    clock.advance(120)
    stale = await authenticator.authenticate(bearer(token("k0", sub="stale")))
    clock.advance(600)
    with pytest.raises(errors.InvalidToken, match="could not be fetched"):
        await authenticator.authenticate(bearer(token("k0", sub="late")))

    assert stale.tenant == "acme"


async def test_failed_fetches_limited(
    make_authenticator: Callable[..., Authenticator], jwks: JwksServer, clock: FakeClock
) -> None:
    jwks.status = 500
    authenticator = make_authenticator(refetch_s=30)

    for _ in range(3):
        with pytest.raises(errors.InvalidToken, match="could not be fetched"):
            await authenticator.authenticate(bearer(token("k0")))
    assert jwks.hits == 1

    clock.advance(31)
    jwks.status = 200
    identity = await authenticator.authenticate(bearer(token("k0")))
    assert identity.tenant == "acme"
    assert jwks.hits == 2


@pytest.mark.parametrize(
    "body", [b"<html>not json</html>", b'{"no_keys": []}', b"[1, 2]", b'{"keys": "none"}']
)
async def test_invalid_document_rejected(
    make_authenticator: Callable[..., Authenticator], jwks: JwksServer, body: bytes
) -> None:
    jwks.body = body

    with pytest.raises(errors.InvalidToken, match="could not be fetched"):
        await make_authenticator().authenticate(bearer(token("k0")))


async def test_invalid_key_skipped(
    make_authenticator: Callable[..., Authenticator], jwks: JwksServer
) -> None:
    jwks.keys = [
        {"kty": "RSA", "kid": "broken", "n": "!!", "e": "AQAB"},
        {"kty": "oct", "kid": "symmetric", "k": "c2VjcmV0"},
        public_jwk(rsa_key(0), kid="k0"),
    ]

    identity = await make_authenticator().authenticate(bearer(token("k0")))

    assert identity.tenant == "acme"


async def test_redirect_not_followed(
    make_authenticator: Callable[..., Authenticator], jwks: JwksServer
) -> None:
    with pytest.raises(errors.InvalidToken, match="could not be fetched"):
        await make_authenticator("/redirect").authenticate(bearer(token("k0")))

    assert jwks.hits == 0


async def test_cached_token_skips_signature(
    make_authenticator: Callable[..., Authenticator], monkeypatch: pytest.MonkeyPatch
) -> None:
    checks = count_verify_calls(monkeypatch, RSAAlgorithm)
    authenticator = make_authenticator()
    repeated = token("k0")

    results: list[Identity] = []
    for _ in range(4):
        results.append(await authenticator.authenticate(bearer(repeated)))

    assert len(checks) == 1
    assert len(set(results)) == 1


async def test_fetch_logged_with_url(
    make_authenticator: Callable[..., Authenticator], jwks: JwksServer, jwks_http: TestServer
) -> None:
    url = str(jwks_http.make_url("/jwks"))
    authenticator = make_authenticator()

    with capture_logs() as logs:
        await authenticator.authenticate(bearer(token("k0")))

    fetched = [entry for entry in logs if entry["event"] == "jwks fetched"]
    assert fetched[0]["url"] == url
    assert fetched[0]["keys"] == 1


async def test_fetch_failure_logged_with_url(
    make_authenticator: Callable[..., Authenticator], jwks: JwksServer, jwks_http: TestServer
) -> None:
    jwks.status = 502
    authenticator = make_authenticator()

    with capture_logs() as logs, pytest.raises(errors.InvalidToken):
        await authenticator.authenticate(bearer(token("k0")))

    failed = [entry for entry in logs if entry["event"] == "jwks fetch failed"]
    assert failed[0]["url"] == str(jwks_http.make_url("/jwks"))
    assert "HTTP 502" in failed[0]["error"]
    assert failed[0]["log_level"] == "warning"


async def test_given_session_left_open(jwks_http: TestServer, clock: FakeClock) -> None:
    issuer = JwtIssuer(algorithms=["RS256"], jwks_url=str(jwks_http.make_url("/jwks")))
    async with aiohttp.ClientSession() as session:
        authenticator = Authenticator([issuer], session=session, clock=clock)
        await authenticator.authenticate(bearer(token("k0")))
        await authenticator.close()

        assert not session.closed


async def test_own_session_closed(jwks_http: TestServer, clock: FakeClock) -> None:
    issuer = JwtIssuer(algorithms=["RS256"], jwks_url=str(jwks_http.make_url("/jwks")))
    authenticator = Authenticator([issuer], clock=clock)
    await authenticator.authenticate(bearer(token("k0")))
    session = authenticator._session  # the session it created on first use

    await authenticator.close()

    assert session is not None
    assert session.closed


async def test_logged_url_hides_credentials(jwks_http: TestServer, clock: FakeClock) -> None:
    url = jwks_http.make_url("/jwks").with_user("reader").with_password("hunter2-password")
    issuer = JwtIssuer(algorithms=["RS256"], jwks_url=str(url))
    authenticator = Authenticator([issuer], clock=clock)

    with capture_logs() as logs:
        await authenticator.authenticate(bearer(token("k0")))
    await authenticator.close()

    fetched = [entry for entry in logs if entry["event"] == "jwks fetched"]
    assert fetched[0]["url"] == str(jwks_http.make_url("/jwks"))
    assert "hunter2" not in repr(logs)

"""The auth keys of the config file: JWKS URL schemes, claim paths, audience, cache size."""

from __future__ import annotations

import pytest

from gatekeeper.config import parse_config
from gatekeeper.errors import ConfigError


def jwt_config(settings: str) -> str:
    return f"auth: {{jwt: {{algorithms: [RS256], {settings}}}}}"


@pytest.mark.parametrize(
    "url",
    [
        "http://idp.example.com/jwks",
        "http://127.0.0.1.example.com/jwks",
        "http://10.0.0.1/jwks",
        "ftp://idp.example.com/jwks",
        "https:///jwks",
    ],
)
def test_jwks_url_non_loopback_http_rejected(url: str) -> None:
    with pytest.raises(ConfigError, match=r"auth\.jwt\.jwks_url: must be an https:// URL"):
        parse_config(jwt_config(f"jwks_url: '{url}'"))


@pytest.mark.parametrize(
    "url",
    [
        "https://idp.example.com/.well-known/jwks.json",
        "http://127.0.0.1:8080/jwks",
        "http://127.8.9.10/jwks",
        "http://[::1]:8080/jwks",
        "http://localhost/jwks",
    ],
)
def test_jwks_url_accepted(url: str) -> None:
    config = parse_config(jwt_config(f"jwks_url: '{url}'"))

    assert config.auth.jwt[0].jwks_url == url


def test_empty_audience_rejected() -> None:
    with pytest.raises(ConfigError, match=r"auth\.jwt\.audience: must name at least one"):
        parse_config(jwt_config("jwks_url: 'https://idp.test/jwks', audience: []"))


def test_empty_claim_path_rejected() -> None:
    with pytest.raises(ConfigError, match=r"auth\.jwt\.tenant_claim: must name a claim"):
        parse_config(jwt_config("jwks_url: 'https://idp.test/jwks', tenant_claim: ''"))


def test_token_cache_size_read() -> None:
    config = parse_config("auth: {token_cache_size: 500}")

    assert config.auth.token_cache_size == 500


def test_negative_token_cache_size_rejected() -> None:
    with pytest.raises(ConfigError, match=r"auth\.token_cache_size"):
        parse_config("auth: {token_cache_size: -1}")

"""How long a fetched JWK Set stays fresh, from the response's Cache-Control and Age."""

from __future__ import annotations

import pytest
from multidict import CIMultiDict

from gatekeeper.auth.jwks import freshness_lifetime
from gatekeeper.config.model import JwksCache

POLICY = JwksCache(min_s=60, max_s=3600)


@pytest.mark.parametrize(
    ("headers", "lifetime"),
    [
        ({"Cache-Control": "max-age=300"}, 300),
        ({"cache-control": "public, max-age=300, must-revalidate"}, 300),
        ({"Cache-Control": 'max-age="300"'}, 300),
        ({"Cache-Control": "max-age=300", "Age": "100"}, 200),
        ({"Cache-Control": "max-age=300", "Age": "290"}, 60),
        ({"Cache-Control": "max-age=300", "Age": "soon"}, 300),
        ({"Cache-Control": "max-age=5"}, 60),
        ({"Cache-Control": "max-age=86400"}, 3600),
        ({"Cache-Control": "no-cache, max-age=300"}, 60),
        ({"Cache-Control": "no-store"}, 60),
        ({"Cache-Control": "max-age=soon"}, 60),
        ({}, 60),
    ],
)
def test_freshness_lifetime(headers: dict[str, str], lifetime: float) -> None:
    assert freshness_lifetime(CIMultiDict(headers), POLICY) == lifetime

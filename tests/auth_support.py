"""Keys, tokens and a settable clock shared by the auth tests.

Tokens are signed with PyJWT where it allows the combination, and by hand (`forge`) where
a test needs what PyJWT refuses to produce: ``alg: none``, or an HS256 token whose HMAC
key is a public key.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import json
from collections.abc import Callable
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import Algorithm, ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from gatekeeper.config.model import JwtIssuer

# 64 bytes, so the same secret also satisfies HS512's minimum length.
SECRET = "unit-test-secret-" + "0123456789abcdef" * 3 + "xyz_-.!"
SECRET_ENV = "GK_AUTH_TEST_SECRET"
ENV = {SECRET_ENV: SECRET}
NOW = 1_700_000_000.0
DROP = object()  # a claim value that removes the claim from `claims`


class FakeClock:
    """A clock that moves only when a test moves it."""

    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@functools.cache
def rsa_key(index: int = 0) -> rsa.RSAPrivateKey:
    """Return the test RSA key number ``index``, generated once per session."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@functools.cache
def ec_key(curve: str = "P-256") -> ec.EllipticCurvePrivateKey:
    curves = {"P-256": ec.SECP256R1(), "P-384": ec.SECP384R1(), "P-521": ec.SECP521R1()}
    return ec.generate_private_key(curves[curve])


@functools.cache
def ed25519_key() -> ed25519.Ed25519PrivateKey:
    return ed25519.Ed25519PrivateKey.generate()


def claims(**overrides: Any) -> dict[str, Any]:
    """Return valid claims at `NOW` for tenant ``acme``. Pass ``name=DROP`` to remove one."""
    result: dict[str, Any] = {"tenant_id": "acme", "iat": int(NOW), "exp": int(NOW) + 3600}
    for name, value in overrides.items():
        if value is DROP:
            result.pop(name, None)
        else:
            result[name] = value
    return result


def sign(
    payload: dict[str, Any],
    key: Any = SECRET,
    algorithm: str = "HS256",
    *,
    kid: str | None = None,
    headers: dict[str, Any] | None = None,
) -> str:
    extra = dict(headers or {})
    if kid is not None:
        extra["kid"] = kid
    return jwt.encode(payload, key, algorithm=algorithm, headers=extra or None)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def forge(
    header: dict[str, Any],
    payload: dict[str, Any],
    hmac_key: bytes | None,
    *,
    digest: Callable[[], Any] = hashlib.sha256,
    signature: bytes = b"",
) -> str:
    """Build a compact JWS by hand: HMAC-signed with any key bytes, or with ``signature``."""
    signing_input = (
        b64url(json.dumps(header).encode()) + "." + b64url(json.dumps(payload).encode())
    )
    if hmac_key is not None:
        signature = hmac.new(hmac_key, signing_input.encode(), digest).digest()
    return signing_input + "." + b64url(signature)


def bearer(token: str) -> str:
    return f"Bearer {token}"


def public_pem(private: Any) -> bytes:
    return bytes(
        private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


def public_jwk(private: Any, *, kid: str | None = None, alg: str | None = None) -> dict[str, Any]:
    """Return the public JWK of ``private``, with ``kid`` and ``alg`` if given."""
    public = private.public_key()
    if isinstance(public, rsa.RSAPublicKey):
        jwk = RSAAlgorithm.to_jwk(public, as_dict=True)
    elif isinstance(public, ec.EllipticCurvePublicKey):
        jwk = ECAlgorithm.to_jwk(public, as_dict=True)
    else:
        jwk = OKPAlgorithm.to_jwk(public, as_dict=True)
    if kid is not None:
        jwk["kid"] = kid
    if alg is not None:
        jwk["alg"] = alg
    return dict(jwk)


def secret_issuer(**fields: Any) -> JwtIssuer:
    """Return a validated HS256 issuer reading `SECRET_ENV`, with ``fields`` overridden."""
    settings: dict[str, Any] = {"algorithms": ["HS256"], "secret_env": SECRET_ENV}
    settings.update(fields)
    return JwtIssuer.model_validate(settings)


def count_verify_calls(monkeypatch: pytest.MonkeyPatch, algorithm: type[Algorithm]) -> list[int]:
    """Count signature checks of ``algorithm``. The returned list grows by one per check."""
    calls: list[int] = []
    original = algorithm.verify

    def counting(self: Algorithm, msg: bytes, key: Any, sig: bytes) -> bool:
        calls.append(1)
        return bool(original(self, msg, key, sig))

    monkeypatch.setattr(algorithm, "verify", counting)
    return calls

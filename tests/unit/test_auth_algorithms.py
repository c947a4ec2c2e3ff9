"""Algorithms: the per-issuer allow-list, ``none``, and keys bound to their own family."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from jwt.algorithms import HMACAlgorithm
from pydantic import ValidationError

from gatekeeper import errors
from gatekeeper.auth import Authenticator
from gatekeeper.config.model import JwtIssuer
from tests.auth_support import (
    ENV,
    SECRET,
    SECRET_ENV,
    FakeClock,
    bearer,
    claims,
    ec_key,
    ed25519_key,
    forge,
    public_jwk,
    public_pem,
    rsa_key,
    secret_issuer,
    sign,
)

NONE_SPELLINGS = ["none", "None", "NONE", "nOnE"]


def rsa_file_issuer(tmp_path: Path, *algorithms: str) -> JwtIssuer:
    path = tmp_path / "rsa.pem"
    path.write_bytes(public_pem(rsa_key(0)))
    return JwtIssuer(algorithms=algorithms or ("RS256",), public_key_file=str(path))


def public_key_texts() -> dict[str, bytes]:
    """The RSA test key's public half in each form an attacker might use as HMAC secret."""
    public = rsa_key(0).public_key()
    der = public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    openssh = public.public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    return {
        "pem": public_pem(rsa_key(0)),
        "der": der,
        "der-base64": base64.b64encode(der),
        "openssh": openssh,
        "jwk": json.dumps(public_jwk(rsa_key(0))).encode(),
    }


@pytest.mark.parametrize("spelling", NONE_SPELLINGS)
@pytest.mark.parametrize("signature", [b"", b"junk"])
async def test_alg_none_rejected(spelling: str, signature: bytes) -> None:
    authenticator = Authenticator([secret_issuer()], env=ENV, clock=FakeClock())
    token = forge({"alg": spelling, "typ": "JWT"}, claims(), None, signature=signature)

    with pytest.raises(errors.InvalidToken):
        await authenticator.authenticate(bearer(token))


@pytest.mark.parametrize("spelling", NONE_SPELLINGS)
def test_config_alg_none_rejected(spelling: str) -> None:
    with pytest.raises(ValidationError, match="'none' is never accepted"):
        secret_issuer(algorithms=[spelling])


def test_unvalidated_config_none_rejected() -> None:
    issuer = JwtIssuer.model_construct(
        algorithms=("HS256", "none"), secret_env=SECRET_ENV, **_defaults()
    )

    with pytest.raises(ValueError, match="'none' is not supported"):
        Authenticator([issuer], env=ENV)


async def test_alg_outside_allow_list_rejected() -> None:
    authenticator = Authenticator([secret_issuer()], env=ENV, clock=FakeClock())
    token = sign(claims(), SECRET, "HS512")

    with pytest.raises(errors.InvalidToken, match="alg is not allowed"):
        await authenticator.authenticate(bearer(token))


async def test_rs384_outside_rs256_list_rejected(tmp_path: Path) -> None:
    authenticator = Authenticator([rsa_file_issuer(tmp_path, "RS256")], clock=FakeClock())
    token = sign(claims(), rsa_key(0), "RS384")

    with pytest.raises(errors.InvalidToken, match="alg is not allowed"):
        await authenticator.authenticate(bearer(token))


@pytest.mark.parametrize("form", sorted(public_key_texts()))
async def test_hs256_with_public_key_rejected(tmp_path: Path, form: str) -> None:
    authenticator = Authenticator([rsa_file_issuer(tmp_path)], clock=FakeClock())
    token = forge({"alg": "HS256", "typ": "JWT"}, claims(), public_key_texts()[form])

    with pytest.raises(errors.InvalidToken):
        await authenticator.authenticate(bearer(token))


@pytest.mark.parametrize("form", sorted(public_key_texts()))
async def test_rsa_key_never_verifies_hs256(
    tmp_path: Path, form: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A config that skipped validation allows HS256 next to RS256 for a public key file.
    # The key's own family must still keep it away from HMAC.
    path = tmp_path / "rsa.pem"
    path.write_bytes(public_pem(rsa_key(0)))
    issuer = JwtIssuer.model_construct(
        algorithms=("RS256", "HS256"), public_key_file=str(path), **_defaults()
    )
    authenticator = Authenticator([issuer], clock=FakeClock())
    hmac_checks: list[Any] = []
    monkeypatch.setattr(HMACAlgorithm, "verify", lambda *args: hmac_checks.append(args))
    token = forge({"alg": "HS256", "typ": "JWT"}, claims(), public_key_texts()[form])

    with pytest.raises(errors.InvalidToken, match="No signing key"):
        await authenticator.authenticate(bearer(token))
    assert hmac_checks == []


@pytest.mark.parametrize("form", sorted(public_key_texts()))
def test_public_key_as_secret_rejected(form: str) -> None:
    # os.environ decodes bytes that are not UTF-8 this way.
    env = {SECRET_ENV: public_key_texts()[form].decode("utf-8", "surrogateescape")}

    with pytest.raises(ValueError, match="must never be used as an HMAC secret"):
        Authenticator([secret_issuer()], env=env)


async def test_ec_key_never_verifies_rs256(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    path.write_text(json.dumps({"keys": [public_jwk(ec_key("P-256"), kid="k")]}))
    issuer = JwtIssuer(algorithms=["RS256", "ES256"], public_key_file=str(path))
    authenticator = Authenticator([issuer], clock=FakeClock())
    token = sign(claims(), rsa_key(0), "RS256", kid="k")

    with pytest.raises(errors.InvalidToken, match="No signing key"):
        await authenticator.authenticate(bearer(token))


async def test_p256_key_never_verifies_es384(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    path.write_text(json.dumps({"keys": [public_jwk(ec_key("P-256"), kid="k")]}))
    issuer = JwtIssuer(algorithms=["ES256", "ES384"], public_key_file=str(path))
    authenticator = Authenticator([issuer], clock=FakeClock())
    token = sign(claims(), ec_key("P-384"), "ES384", kid="k")

    with pytest.raises(errors.InvalidToken, match="No signing key"):
        await authenticator.authenticate(bearer(token))


@pytest.mark.parametrize(
    ("algorithm", "private"),
    [
        ("RS256", rsa_key),
        ("PS512", rsa_key),
        ("ES256", lambda: ec_key("P-256")),
        ("ES512", lambda: ec_key("P-521")),
        ("EdDSA", ed25519_key),
    ],
)
async def test_family_algorithms_verify(tmp_path: Path, algorithm: str, private: Any) -> None:
    path = tmp_path / "key.pem"
    path.write_bytes(public_pem(private()))
    issuer = JwtIssuer(algorithms=[algorithm], public_key_file=str(path))
    authenticator = Authenticator([issuer], clock=FakeClock())

    identity = await authenticator.authenticate(bearer(sign(claims(), private(), algorithm)))

    assert identity.tenant == "acme"


def _defaults() -> dict[str, Any]:
    """Field defaults that ``model_construct`` would otherwise leave unset."""
    return {
        name: field.default
        for name, field in JwtIssuer.model_fields.items()
        if name not in ("algorithms", "secret_env", "public_key_file")
    }

"""Key material: secrets from the environment, PEM and JWK Set key files, selection by kid."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from gatekeeper import errors
from gatekeeper.auth import Authenticator
from gatekeeper.config.model import JwtIssuer
from tests.auth_support import (
    ENV,
    SECRET_ENV,
    FakeClock,
    bearer,
    claims,
    ec_key,
    public_jwk,
    public_pem,
    rsa_key,
    secret_issuer,
    sign,
)


def file_issuer(path: Path, *algorithms: str) -> JwtIssuer:
    return JwtIssuer(algorithms=algorithms or ("RS256",), public_key_file=str(path))


def write_pem(path: Path, *entries: tuple[str | None, bytes]) -> Path:
    lines: list[str] = ["Keys of the test issuer."]
    for kid, pem in entries:
        if kid is not None:
            lines.append(f"kid: {kid}")
        lines.append(pem.decode().strip())
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("env", [{}, {SECRET_ENV: ""}])
def test_secret_env_missing(env: dict[str, str]) -> None:
    with pytest.raises(ValueError, match=f"environment variable {SECRET_ENV} is not set or empty"):
        Authenticator([secret_issuer()], env=env)


def test_secret_too_short() -> None:
    with pytest.raises(ValueError, match="need at least 32 bytes"):
        Authenticator([secret_issuer()], env={SECRET_ENV: "short"})


def test_secret_too_short_for_hs512() -> None:
    issuer = secret_issuer(algorithms=["HS256", "HS512"])

    with pytest.raises(ValueError, match="need at least 64 bytes"):
        Authenticator([issuer], env={SECRET_ENV: "s" * 40})


async def test_secret_verifies_hs256() -> None:
    authenticator = Authenticator([secret_issuer()], env=ENV, clock=FakeClock())

    identity = await authenticator.authenticate(bearer(sign(claims())))

    assert identity.tenant == "acme"


async def test_pem_file_selects_key_by_kid(tmp_path: Path) -> None:
    path = write_pem(
        tmp_path / "keys.pem", ("old", public_pem(rsa_key(0))), ("new", public_pem(rsa_key(1)))
    )
    authenticator = Authenticator([file_issuer(path)], clock=FakeClock())

    old = await authenticator.authenticate(bearer(sign(claims(), rsa_key(0), "RS256", kid="old")))
    new = await authenticator.authenticate(bearer(sign(claims(), rsa_key(1), "RS256", kid="new")))

    assert old.tenant == "acme"
    assert new.tenant == "acme"


async def test_pem_file_wrong_kid_rejected(tmp_path: Path) -> None:
    path = write_pem(
        tmp_path / "keys.pem", ("old", public_pem(rsa_key(0))), ("new", public_pem(rsa_key(1)))
    )
    authenticator = Authenticator([file_issuer(path)], clock=FakeClock())
    token = sign(claims(), rsa_key(0), "RS256", kid="new")

    with pytest.raises(errors.InvalidToken, match="signature is invalid"):
        await authenticator.authenticate(bearer(token))


async def test_pem_file_unknown_kid_rejected(tmp_path: Path) -> None:
    path = write_pem(tmp_path / "keys.pem", ("old", public_pem(rsa_key(0))))
    authenticator = Authenticator([file_issuer(path)], clock=FakeClock())
    token = sign(claims(), rsa_key(0), "RS256", kid="unknown")

    with pytest.raises(errors.InvalidToken, match="No signing key"):
        await authenticator.authenticate(bearer(token))


async def test_pem_key_without_kid_matches_any(tmp_path: Path) -> None:
    path = write_pem(tmp_path / "key.pem", (None, public_pem(rsa_key(0))))
    authenticator = Authenticator([file_issuer(path)], clock=FakeClock())

    with_kid = await authenticator.authenticate(
        bearer(sign(claims(), rsa_key(0), "RS256", kid="any"))
    )
    without_kid = await authenticator.authenticate(bearer(sign(claims(), rsa_key(0), "RS256")))

    assert with_kid.tenant == "acme"
    assert without_kid.tenant == "acme"


async def test_pem_certificate_accepted(tmp_path: Path) -> None:
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID

    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "idp.test")])
    start = datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(rsa_key(0).public_key())
        .serial_number(1)
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=3650))
        .sign(rsa_key(0), hashes.SHA256())
    )
    pem = certificate.public_bytes(serialization.Encoding.PEM)
    path = write_pem(tmp_path / "cert.pem", ("c1", pem))
    authenticator = Authenticator([file_issuer(path)], clock=FakeClock())
    token = sign(claims(), rsa_key(0), "RS256", kid="c1")

    identity = await authenticator.authenticate(bearer(token))

    assert identity.tenant == "acme"


async def test_jwks_file_selects_key_by_kid(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    document = {
        "keys": [public_jwk(rsa_key(0), kid="rsa"), public_jwk(ec_key("P-256"), kid="ec")]
    }
    path.write_text(json.dumps(document))
    issuer = file_issuer(path, "RS256", "ES256")
    authenticator = Authenticator([issuer], clock=FakeClock())

    by_rsa = await authenticator.authenticate(
        bearer(sign(claims(), rsa_key(0), "RS256", kid="rsa"))
    )
    by_ec = await authenticator.authenticate(
        bearer(sign(claims(), ec_key("P-256"), "ES256", kid="ec"))
    )

    assert by_rsa.tenant == "acme"
    assert by_ec.tenant == "acme"


def test_private_pem_rejected(tmp_path: Path) -> None:
    pem = rsa_key(0).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    path = write_pem(tmp_path / "private.pem", ("k", pem))

    with pytest.raises(ValueError, match="is a private key"):
        Authenticator([file_issuer(path)])


def test_private_jwk_rejected(tmp_path: Path) -> None:
    from jwt.algorithms import RSAAlgorithm

    private = RSAAlgorithm.to_jwk(rsa_key(0), as_dict=True)
    path = tmp_path / "keys.json"
    path.write_text(json.dumps({"keys": [private]}))

    with pytest.raises(ValueError, match="private key members"):
        Authenticator([file_issuer(path)])


def test_duplicate_kid_rejected(tmp_path: Path) -> None:
    path = write_pem(
        tmp_path / "keys.pem", ("same", public_pem(rsa_key(0))), ("same", public_pem(rsa_key(1)))
    )

    with pytest.raises(ValueError, match="kid 'same' names more than one key"):
        Authenticator([file_issuer(path)])


def test_key_file_missing(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cannot read the file"):
        Authenticator([file_issuer(tmp_path / "absent.pem")])


def test_key_file_without_keys(tmp_path: Path) -> None:
    path = tmp_path / "empty.pem"
    path.write_text("no keys here\n")

    with pytest.raises(ValueError, match="contains no public key"):
        Authenticator([file_issuer(path)])


def test_small_rsa_key_rejected(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives.asymmetric import rsa

    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    path = write_pem(tmp_path / "small.pem", ("k", public_pem(small)))

    with pytest.raises(ValueError, match="1024 bits"):
        Authenticator([file_issuer(path)])


def test_jwk_alg_outside_family_rejected(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    path.write_text(json.dumps({"keys": [public_jwk(rsa_key(0), kid="k", alg="ES256")]}))

    with pytest.raises(ValueError, match="does not fit this key"):
        Authenticator([file_issuer(path)])


async def test_jwk_alg_limits_key(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    path.write_text(json.dumps({"keys": [public_jwk(rsa_key(0), kid="k", alg="PS256")]}))
    authenticator = Authenticator([file_issuer(path, "RS256", "PS256")], clock=FakeClock())
    token = sign(claims(), rsa_key(0), "RS256", kid="k")

    with pytest.raises(errors.InvalidToken, match="No signing key"):
        await authenticator.authenticate(bearer(token))

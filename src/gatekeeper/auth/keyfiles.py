"""Key material read at startup: HMAC secrets from the environment and public key files.

A key file is either a JWK Set (JSON, ``{"keys": [...]}``) or PEM text with one or more
``PUBLIC KEY``, ``RSA PUBLIC KEY`` or ``CERTIFICATE`` blocks. In PEM text, a line
``kid: NAME`` before a block gives that key its id, because PEM itself has no place for one::

    kid: 2024-06
    -----BEGIN PUBLIC KEY-----
    ...
    -----END PUBLIC KEY-----

Every problem raises ``ValueError`` naming the file or variable, so a bad key stops the
gateway at startup instead of rejecting tokens later.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable, Mapping
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

from gatekeeper.auth.keys import (
    HMAC_MIN_SECRET_BYTES,
    VerificationKey,
    parse_jwks,
    public_key_entry,
    secret_entry,
)

OPENSSH_PREFIXES = (
    b"ssh-rsa ", b"ssh-dss ", b"ssh-ed25519 ", b"ssh-ed448 ", b"ecdsa-sha2-",
    b"sk-ssh-ed25519", b"sk-ecdsa-sha2-",
)


def load_secret(
    env_name: str, env: Mapping[str, str], algorithms: Iterable[str]
) -> VerificationKey:
    """Read an HMAC secret from the environment variable ``env_name``.

    The secret is the variable's value as bytes (UTF-8). It must be at least as long as the
    largest hash output among ``algorithms``: 32 bytes for HS256, 64 for HS512. It must not
    be public key material, because anyone who has the public key could then sign HS* tokens.

    Raises:
        ValueError: when the variable is unset or empty, too short, or holds key material.
    """
    value = env.get(env_name, "")
    if not value:
        raise ValueError(
            f"environment variable {env_name} is not set or empty. Set it to the HMAC secret "
            "shared with the token issuer."
        )
    # surrogateescape returns the variable's original bytes where they were not UTF-8,
    # which is how os.environ decodes them.
    secret = value.encode("utf-8", "surrogateescape")
    validate_hmac_secret(secret, algorithms, source=f"environment variable {env_name}")
    return secret_entry(secret)


def validate_hmac_secret(secret: bytes, algorithms: Iterable[str], *, source: str) -> None:
    """Raise ValueError unless ``secret`` is long enough for ``algorithms`` and no key text."""
    kind = describe_key_material(secret)
    if kind is not None:
        raise ValueError(
            f"{source} contains {kind}, which must never be used as an HMAC secret. Use a "
            "random secret, or verify RS*/ES*/EdDSA tokens with public_key_file or jwks_url."
        )

    needed = max((HMAC_MIN_SECRET_BYTES.get(name, 0) for name in algorithms), default=0)
    if len(secret) < needed:
        raise ValueError(
            f"{source} contains a {len(secret)}-byte secret, but the configured HS* algorithms "
            f"need at least {needed} bytes. Generate one with `openssl rand -base64 48`."
        )


def describe_key_material(secret: bytes) -> str | None:
    """Return what kind of asymmetric key text ``secret`` is, or None for a plain secret.

    Recognises PEM blocks, OpenSSH public keys, JSON Web Keys and DER keys or
    certificates, both raw and base64-encoded.
    """
    text = secret.strip()
    if b"-----BEGIN " in text:
        return "a PEM key or certificate"
    if text.startswith(OPENSSH_PREFIXES):
        return "an OpenSSH public key"
    if text.startswith(b"{"):
        try:
            document = json.loads(text)
        except ValueError:
            document = None
        if isinstance(document, dict) and ("kty" in document or "keys" in document):
            return "a JSON Web Key"

    try:
        decoded = base64.b64decode(text, validate=True)
    except binascii.Error:
        decoded = b""
    if _is_der_key(secret) or (decoded and _is_der_key(decoded)):
        return "a DER key or certificate"
    return None


def _is_der_key(data: bytes) -> bool:
    loaders = (
        serialization.load_der_public_key,
        x509.load_der_x509_certificate,
        lambda raw: serialization.load_der_private_key(raw, password=None),
    )
    for load in loaders:
        try:
            load(data)
        except (ValueError, TypeError, UnsupportedAlgorithm):
            continue
        return True
    return False


def load_key_file(path: Path) -> list[VerificationKey]:
    """Load the public keys in a PEM or JWK Set file.

    Raises:
        ValueError: when the file cannot be read, contains no key or a private key,
            names a ``kid`` twice, or any key is unusable.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"public_key_file {path}: cannot read the file ({error})") from error

    is_json = text.lstrip().startswith("{")
    try:
        keys = _parse_jwks_text(text) if is_json else _parse_pem_text(text)
    except ValueError as error:
        raise ValueError(f"public_key_file {path}: {error}") from error

    if not keys:
        raise ValueError(f"public_key_file {path}: the file contains no public key")
    kids = [key.kid for key in keys if key.kid is not None]
    duplicates = sorted({kid for kid in kids if kids.count(kid) > 1})
    if duplicates:
        raise ValueError(f"public_key_file {path}: kid {duplicates[0]!r} names more than one key")
    return keys


def _parse_jwks_text(text: str) -> list[VerificationKey]:
    try:
        document = json.loads(text)
    except ValueError as error:
        raise ValueError(f"invalid JSON ({error})") from error
    keys, problems = parse_jwks(document)
    if problems:
        raise ValueError(problems[0])
    return keys


def _parse_pem_text(text: str) -> list[VerificationKey]:
    keys: list[VerificationKey] = []
    kid: str | None = None
    block: list[str] | None = None
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if block is not None:
            block.append(stripped)
            if stripped.startswith("-----END "):
                keys.append(_load_pem_block("\n".join(block), kid, number))
                block, kid = None, None
        elif stripped.startswith("-----BEGIN "):
            block = [stripped]
        elif stripped.startswith("kid:"):
            kid = stripped.removeprefix("kid:").strip() or None
    if block is not None:
        raise ValueError(f"the PEM block {block[0]!r} has no END line")
    return keys


def _load_pem_block(block: str, kid: str | None, line: int) -> VerificationKey:
    label = block.splitlines()[0].removeprefix("-----BEGIN ").removesuffix("-----")
    where = f"the {label} block ending on line {line}"
    if "PRIVATE KEY" in label:
        raise ValueError(f"{where} is a private key, but the gateway needs only the public key")

    data = block.encode("ascii", errors="replace")
    key: object
    try:
        if label == "CERTIFICATE":
            key = x509.load_pem_x509_certificate(data).public_key()
        elif label in ("PUBLIC KEY", "RSA PUBLIC KEY"):
            key = serialization.load_pem_public_key(data)
        else:
            raise ValueError(
                "its label is not supported. Use PUBLIC KEY, RSA PUBLIC KEY or CERTIFICATE blocks."
            )
        return public_key_entry(key, kid=kid)
    except (ValueError, UnsupportedAlgorithm) as error:
        raise ValueError(f"{where} is not usable: {error}") from error

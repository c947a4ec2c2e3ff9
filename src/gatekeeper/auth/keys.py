"""Verification keys, the algorithms each key may verify, and key sets looked up by ``kid``.

Every key is bound to its own algorithm family when it is loaded: an RSA key verifies only
RS*/PS*, an EC key only the ES* algorithm of its curve, an Ed25519/Ed448 key only EdDSA, and
an HMAC secret only HS*. This binding, not the token's ``alg`` header, decides which
algorithms a key can verify, so a token cannot make the gateway use an RSA public key as an
HMAC secret.

Key sources (`StaticKeys` here, `JwksKeys` in ``jwks.py``) hand the verifier a `KeySet` and
confirm later that a key is still current, which the verified-token cache relies on.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeAlias

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

PublicKey: TypeAlias = (
    rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | ed448.Ed448PublicKey
)

RSA_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
EC_ALGORITHM_BY_CURVE = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}
OKP_ALGORITHMS = frozenset({"EdDSA"})
# Minimum HMAC secret length in bytes: the hash output size (RFC 7518 section 3.2).
HMAC_MIN_SECRET_BYTES = {"HS256": 32, "HS384": 48, "HS512": 64}
HMAC_ALGORITHMS = frozenset(HMAC_MIN_SECRET_BYTES)
SUPPORTED_ALGORITHMS = (
    RSA_ALGORITHMS | frozenset(EC_ALGORITHM_BY_CURVE.values()) | OKP_ALGORITHMS | HMAC_ALGORITHMS
)
MIN_RSA_BITS = 2048


@dataclass(frozen=True, slots=True)
class VerificationKey:
    """A public key or HMAC secret, with the algorithms it may verify.

    ``fingerprint`` is the SHA-256 of the key's SubjectPublicKeyInfo DER, or of the secret.
    It identifies the same key across JWKS refreshes, which return new key objects.
    """

    kid: str | None
    material: PublicKey | bytes = field(repr=False)
    algorithms: frozenset[str]
    fingerprint: bytes = field(repr=False)


def public_key_algorithms(key: PublicKey) -> frozenset[str]:
    """Return the algorithms a public key may verify.

    Raises:
        ValueError: for RSA keys under 2048 bits and EC curves without a JWS algorithm.
    """
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < MIN_RSA_BITS:
            raise ValueError(f"the RSA key has {key.key_size} bits, fewer than {MIN_RSA_BITS}")
        return RSA_ALGORITHMS
    if isinstance(key, ec.EllipticCurvePublicKey):
        algorithm = EC_ALGORITHM_BY_CURVE.get(key.curve.name)
        if algorithm is None:
            raise ValueError(
                f"the EC curve {key.curve.name} is not supported. Use P-256, P-384 or P-521."
            )
        return frozenset({algorithm})
    return OKP_ALGORITHMS


def public_key_entry(key: Any, *, kid: str | None, algorithm: str | None = None) -> VerificationKey:
    """Bind a public key to its algorithms and fingerprint.

    Args:
        key: a public key object from ``cryptography``.
        kid: the key id that tokens name in their ``kid`` header, if any.
        algorithm: the key's own ``alg``, which narrows it to that one algorithm.

    Raises:
        ValueError: for private keys, unsupported key types, and an ``algorithm`` outside
            the key's family.
    """
    if hasattr(key, "private_bytes"):
        raise ValueError("expected a public key but found a private key. Use the public part.")
    if not isinstance(key, PublicKey):
        raise ValueError(
            f"{type(key).__name__} keys are not supported. Use RSA, EC or Ed25519/Ed448 keys."
        )

    algorithms = public_key_algorithms(key)
    if algorithm is not None:
        if algorithm not in algorithms:
            fits = ", ".join(sorted(algorithms))
            raise ValueError(f"alg {algorithm!r} does not fit this key, which fits {fits}")
        algorithms = frozenset({algorithm})

    der = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return VerificationKey(kid, key, algorithms, hashlib.sha256(der).digest())


def secret_entry(secret: bytes) -> VerificationKey:
    """Bind an HMAC secret to the HS* algorithms."""
    return VerificationKey(None, secret, HMAC_ALGORITHMS, hashlib.sha256(secret).digest())


def parse_jwk(data: Mapping[str, Any]) -> VerificationKey:
    """Turn one JSON Web Key (RFC 7517) into a verification key.

    Only public signing keys are accepted: ``kty`` RSA, EC or OKP, ``use`` absent or
    ``sig``, ``key_ops`` absent or containing ``verify``, and no private members.

    Raises:
        ValueError: naming what makes the key unusable.
    """
    kid = data.get("kid")
    if kid is not None and not isinstance(kid, str):
        raise ValueError("kid must be a string")
    if "d" in data:
        raise ValueError("the JWK contains private key members. Publish only the public part.")
    if data.get("use", "sig") != "sig":
        raise ValueError("use is not 'sig'")
    key_ops = data.get("key_ops")
    if key_ops is not None and (not isinstance(key_ops, list) or "verify" not in key_ops):
        raise ValueError("key_ops does not contain 'verify'")
    algorithm = data.get("alg")
    if algorithm is not None and not isinstance(algorithm, str):
        raise ValueError("alg must be a string")

    parsers: dict[str, Callable[[dict[str, Any]], Any]] = {
        "RSA": RSAAlgorithm.from_jwk,
        "EC": ECAlgorithm.from_jwk,
        "OKP": OKPAlgorithm.from_jwk,
    }
    kty = data.get("kty")
    parser = parsers.get(kty) if isinstance(kty, str) else None
    if parser is None:
        raise ValueError(f"kty {kty!r} is not supported. Use RSA, EC or OKP.")
    try:
        key = parser(dict(data))
    # PyJWT raises InvalidKeyError for most bad members, but lets ValueError, TypeError and
    # KeyError from number and base64 decoding through.
    except (jwt.PyJWTError, ValueError, TypeError, KeyError) as error:
        raise ValueError(f"the {kty} key members are invalid ({error})") from error
    return public_key_entry(key, kid=kid, algorithm=algorithm)


def parse_jwks(document: object) -> tuple[list[VerificationKey], list[str]]:
    """Parse a JWK Set document (``{"keys": [...]}``).

    Returns:
        The usable keys, and one problem description for each key that was skipped.

    Raises:
        ValueError: when the document is not a JWK Set at all.
    """
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise ValueError('expected a JSON object with a "keys" list')

    keys: list[VerificationKey] = []
    problems: list[str] = []
    for index, entry in enumerate(document["keys"]):
        if not isinstance(entry, dict):
            problems.append(f"keys[{index}]: not a JSON object")
            continue
        if entry.get("kty") == "oct":
            # Symmetric keys never come from a key set: HS* uses secret_env only.
            problems.append(f"keys[{index}]: symmetric (oct) keys are ignored")
            continue
        try:
            keys.append(parse_jwk(entry))
        except ValueError as error:
            problems.append(f"keys[{index}] (kid {entry.get('kid')!r}): {error}")
    return keys, problems


class KeySet:
    """An immutable set of verification keys, looked up by ``kid``."""

    def __init__(self, keys: Sequence[VerificationKey]) -> None:
        self.keys = tuple(keys)
        self._kids = frozenset(key.kid for key in self.keys if key.kid is not None)
        self._fingerprints = frozenset(key.fingerprint for key in self.keys)

    def __len__(self) -> int:
        return len(self.keys)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, VerificationKey) and key.fingerprint in self._fingerprints

    def has_kid(self, kid: str) -> bool:
        return kid in self._kids

    def candidates(self, kid: str | None) -> list[VerificationKey]:
        """Return the keys that may have signed a token with this ``kid`` header.

        A token without ``kid`` may match any key. Keys without ``kid`` match any token.
        """
        if kid is None:
            return list(self.keys)
        return [key for key in self.keys if key.kid in (kid, None)]


class KeySource(Protocol):
    """Source of an issuer's keys, fixed at startup or fetched from a JWKS URL."""

    async def key_set(self, kid: str | None) -> KeySet:
        """Return the current keys, fetching them first when the source needs to.

        Raises:
            InvalidToken: when no usable keys are available.
        """
        ...

    async def is_current(self, key: VerificationKey) -> bool:
        """Return whether ``key`` is still one of the source's keys."""
        ...


class StaticKeys:
    """Keys loaded once at startup from an environment variable or a key file."""

    def __init__(self, keys: Sequence[VerificationKey]) -> None:
        self._keys = KeySet(keys)

    async def key_set(self, kid: str | None) -> KeySet:
        return self._keys

    async def is_current(self, key: VerificationKey) -> bool:
        return key in self._keys

"""Token checks: the Authorization header, the unverified header and claims, and the full
verification of a token against one issuer's keys and claim rules.

One issuer checks, in this order:

1. ``alg`` is in the issuer's allow-list.
2. A key matches the ``kid`` and may verify that ``alg``.
3. PyJWT checks the signature, ``iss``, ``aud`` and the required claims.
4. The registered claims have the right types.
5. ``exp``, ``nbf`` and ``iat`` are checked against the injected clock. PyJWT's own time
   checks are off, because they read the system clock.
6. The claims map to an Identity.

Every failure raises InvalidToken with a fixed phrase that contains no token content.
"""

from __future__ import annotations

import base64
import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import jwt
from jwt.types import Options

from gatekeeper.auth.identity import Identity, build_identity
from gatekeeper.auth.keys import SUPPORTED_ALGORITHMS, KeySource, VerificationKey
from gatekeeper.config.model import JwtIssuer
from gatekeeper.errors import InvalidToken, MissingToken

# Longer tokens are rejected before decoding, which bounds the work of an unauthenticated
# request. The limit matches the proxy's maximum header field size (16 KiB).
MAX_TOKEN_LENGTH = 16 * 1024
# Compact JWS serialization: three base64url segments, none of them empty.
COMPACT_JWS = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")


def parse_bearer(authorization: str | None) -> str:
    """Return the token of an ``Authorization: Bearer`` header value.

    Raises:
        MissingToken: when there is no header, no token, or another scheme (RFC 6750
            section 3.1 sends no error code for requests without bearer credentials).
        InvalidToken: when the token is too long or not in compact JWS form.
    """
    if authorization is None or not authorization.strip():
        raise MissingToken()
    scheme, _, credentials = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        raise MissingToken("This route requires a Bearer token in the Authorization header.")
    token = credentials.strip()
    if not token:
        raise MissingToken()
    if len(token) > MAX_TOKEN_LENGTH:
        raise InvalidToken(f"The token is longer than {MAX_TOKEN_LENGTH} characters.")
    if not COMPACT_JWS.fullmatch(token):
        raise InvalidToken("The token is not a JWT: expected three base64url segments.")
    return token


def read_unverified(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Decode the header and claims of a compact JWS without checking anything else.

    The claims serve only to choose the issuer, which verifies them again.

    Raises:
        InvalidToken: when either part is not a base64url-encoded JSON object.
    """
    header_segment, payload_segment, _ = token.split(".")
    return _decode_segment(header_segment, "header"), _decode_segment(payload_segment, "payload")


def _decode_segment(segment: str, part: str) -> dict[str, Any]:
    try:
        value = json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    # binascii.Error, UnicodeDecodeError and JSONDecodeError are all ValueErrors.
    except (ValueError, RecursionError):
        raise InvalidToken(f"The token's {part} is not base64url-encoded JSON.") from None
    if not isinstance(value, dict):
        raise InvalidToken(f"The token's {part} is not a JSON object.")
    return value


@dataclass(frozen=True, slots=True)
class Verified:
    """A verified token's identity and the key that verified its signature."""

    identity: Identity
    key: VerificationKey


class IssuerVerifier:
    """Verifies tokens of one configured issuer."""

    def __init__(self, config: JwtIssuer, keys: KeySource, clock: Callable[[], float]) -> None:
        """Bind an issuer's settings to its key source.

        Raises:
            ValueError: when ``config.algorithms`` names an unsupported algorithm, which
                only a config built without validation can do.
        """
        unsupported = sorted(set(config.algorithms) - SUPPORTED_ALGORITHMS)
        if unsupported:
            raise ValueError(f"algorithms: {unsupported[0]!r} is not supported")
        self.config = config
        self.keys = keys
        self._clock = clock
        self._options: Options = {
            "require": list(dict.fromkeys(("exp", *config.required_claims))),
            "verify_exp": False,
            "verify_nbf": False,
            "verify_iat": False,
            "verify_iss": config.issuer is not None,
            "verify_aud": config.audience is not None,
        }

    async def verify(self, token: str, header: Mapping[str, Any]) -> Verified:
        """Verify ``token`` and map its claims to an Identity.

        Args:
            token: the compact JWS, checked by `parse_bearer`.
            header: its unverified JOSE header, from `read_unverified`.

        Raises:
            InvalidToken: naming the first check that failed.
        """
        algorithm = header.get("alg")
        if not isinstance(algorithm, str) or algorithm not in self.config.algorithms:
            allowed = ", ".join(self.config.algorithms)
            raise InvalidToken(f"The token's alg is not allowed. This issuer uses {allowed}.")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise InvalidToken("The token's kid header must be a string.")

        key_set = await self.keys.key_set(kid)
        candidates = [key for key in key_set.candidates(kid) if algorithm in key.algorithms]
        if not candidates:
            raise InvalidToken("No signing key of the token's issuer matches its kid and alg.")

        claims, key = self._check_signature(token, algorithm, candidates)
        expires_at = check_claim_types(claims)
        check_times(claims, expires_at, self._clock(), self.config.leeway_s)
        return Verified(build_identity(claims, self.config, expires_at), key)

    def _check_signature(
        self, token: str, algorithm: str, candidates: list[VerificationKey]
    ) -> tuple[dict[str, Any], VerificationKey]:
        # Several candidates exist only when the token or the keys lack a kid.
        for key in candidates:
            try:
                claims = jwt.decode(
                    token,
                    key.material,
                    algorithms=[algorithm],
                    options=self._options,
                    issuer=self.config.issuer,
                    audience=self.config.audience,
                )
            except jwt.InvalidSignatureError:
                continue
            except jwt.PyJWTError as error:
                raise InvalidToken(describe_jwt_error(error)) from error
            return claims, key
        raise InvalidToken("The token's signature is invalid.")


def describe_jwt_error(error: jwt.PyJWTError) -> str:
    """Return a fixed client-facing phrase for a PyJWT error, without token content."""
    if isinstance(error, jwt.MissingRequiredClaimError):
        return f"The token lacks the required {error.claim} claim."
    if isinstance(error, jwt.InvalidIssuerError):
        return "The token's issuer (iss) is not accepted."
    if isinstance(error, jwt.InvalidAudienceError):
        return "The token's audience (aud) is not accepted."
    if isinstance(error, jwt.exceptions.InvalidSubjectError):
        return "The token's sub claim must be a string."
    if isinstance(error, jwt.exceptions.InvalidJTIError):
        return "The token's jti claim must be a string."
    if isinstance(error, jwt.InvalidKeyError):
        return "The signing key does not fit the token's alg."
    if isinstance(error, jwt.DecodeError):
        return "The token is malformed."
    return "The token is invalid."


def check_claim_types(claims: Mapping[str, Any]) -> float:
    """Check the types of the registered claims that PyJWT leaves unchecked.

    Returns:
        The ``exp`` claim in seconds since the epoch.

    Raises:
        InvalidToken: when ``iss`` is not a string, ``aud`` is not a string or list of
            strings, or ``exp``, ``nbf`` or ``iat`` is not a finite number.
    """
    issuer = claims.get("iss")
    if issuer is not None and not isinstance(issuer, str):
        raise InvalidToken("The token's iss claim must be a string.")
    audience = claims.get("aud")
    if audience is not None and not (
        isinstance(audience, str)
        or (isinstance(audience, list) and all(isinstance(item, str) for item in audience))
    ):
        raise InvalidToken("The token's aud claim must be a string or a list of strings.")

    for name in ("nbf", "iat"):
        numeric_date(claims, name)
    expires_at = numeric_date(claims, "exp")
    if expires_at is None:
        raise InvalidToken("The token lacks the required exp claim.")
    return expires_at


def numeric_date(claims: Mapping[str, Any], name: str) -> float | None:
    """Return a NumericDate claim (RFC 7519 section 2) as float seconds, or None if absent.

    Raises:
        InvalidToken: when the claim is a boolean or not a finite number.
    """
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidToken(f"The token's {name} claim must be a number of seconds.")
    try:
        seconds = float(value)
    except OverflowError:
        seconds = math.inf
    if not math.isfinite(seconds):
        raise InvalidToken(f"The token's {name} claim must be a finite number of seconds.")
    return seconds


def check_times(claims: Mapping[str, Any], expires_at: float, now: float, leeway: float) -> None:
    """Check ``exp``, ``nbf`` and ``iat`` against ``now``, each with ``leeway`` seconds.

    Raises:
        InvalidToken: when the token has expired, is not valid yet, or was issued in the
            future.
    """
    if now >= expires_at + leeway:
        raise InvalidToken("The token has expired.")
    not_before = numeric_date(claims, "nbf")
    if not_before is not None and not_before > now + leeway:
        raise InvalidToken("The token is not valid yet: its nbf claim is in the future.")
    issued_at = numeric_date(claims, "iat")
    if issued_at is not None and issued_at > now + leeway:
        raise InvalidToken("The token's iat claim is in the future.")

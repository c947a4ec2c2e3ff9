"""The gateway's entry point to authentication: Authorization header in, Identity out.

One `Authenticator` serves every configured issuer. It picks the issuer by the token's
unverified ``iss`` claim, lets that issuer's `IssuerVerifier` check the token, and keeps
verified tokens in a `TokenCache` until they expire. A cache hit is served only after the
issuer's key source confirms the signing key is still current.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import aiohttp

from gatekeeper.auth.cache import DEFAULT_TOKEN_CACHE_SIZE, CachedToken, TokenCache, token_digest
from gatekeeper.auth.identity import Identity
from gatekeeper.auth.jwks import JwksKeys
from gatekeeper.auth.keyfiles import load_key_file, load_secret
from gatekeeper.auth.keys import KeySource, StaticKeys
from gatekeeper.auth.verifier import IssuerVerifier, parse_bearer, read_unverified
from gatekeeper.config.model import JwtIssuer
from gatekeeper.errors import InvalidToken


class Authenticator:
    """Verifies bearer tokens of the configured issuers and caches the results."""

    def __init__(
        self,
        issuers: Sequence[JwtIssuer],
        *,
        env: Mapping[str, str] | None = None,
        session: aiohttp.ClientSession | None = None,
        clock: Callable[[], float] = time.time,
        cache_size: int = DEFAULT_TOKEN_CACHE_SIZE,
    ) -> None:
        """Load every issuer's key material. JWKS URLs are fetched on first use.

        Args:
            issuers: the ``auth.jwt`` issuers. With more than one, each needs ``issuer``.
            env: where ``secret_env`` variables are read; defaults to ``os.environ``.
            session: the HTTP session for JWKS fetches. Without one, the authenticator
                creates its own on first use and closes it in `close`.
            clock: returns the current time in seconds since the epoch.
            cache_size: the maximum number of verified tokens kept (``auth.token_cache_size``);
                0 turns the cache off.

        Raises:
            ValueError: on a missing or unusable secret or key file, or issuers that a token
                could not be matched to unambiguously.
        """
        self._env = os.environ if env is None else env
        self._session = session
        self._owns_session = False
        self._clock = clock
        self._cache = TokenCache(cache_size)
        self._verifiers = [
            IssuerVerifier(issuer, self._key_source(issuer), clock) for issuer in issuers
        ]
        self._by_issuer = self._index_by_issuer(self._verifiers)

    def _key_source(self, issuer: JwtIssuer) -> KeySource:
        if issuer.secret_env:
            return StaticKeys([load_secret(issuer.secret_env, self._env, issuer.algorithms)])
        if issuer.public_key_file:
            return StaticKeys(load_key_file(Path(issuer.public_key_file)))
        if issuer.jwks_url:
            return JwksKeys(issuer.jwks_url, issuer.jwks_cache, self._http_session, self._clock)
        raise ValueError("set one of jwks_url, public_key_file, secret_env")

    @staticmethod
    def _index_by_issuer(verifiers: list[IssuerVerifier]) -> dict[str | None, IssuerVerifier]:
        if len(verifiers) == 1 and verifiers[0].config.issuer is None:
            # One issuer without an issuer setting accepts tokens whatever their iss.
            return {None: verifiers[0]}
        index: dict[str | None, IssuerVerifier] = {}
        for verifier in verifiers:
            name = verifier.config.issuer
            if name is None:
                raise ValueError("with several issuers, each needs 'issuer' to select it")
            if name in index:
                raise ValueError(f"issuer {name!r} is configured twice")
            index[name] = verifier
        return index

    def _http_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession()
            self._owns_session = True
        return self._session

    async def authenticate(self, authorization: str | None) -> Identity:
        """Return the identity in an ``Authorization`` header value.

        Args:
            authorization: the header value, or None when the request has none.

        Returns:
            The identity of a valid token, from the cache when the same token was
            verified before, has not expired, and its signing key is still current.

        Raises:
            MissingToken: when there is no bearer token.
            InvalidToken: when the token fails any check; the detail names the check.
        """
        token = parse_bearer(authorization)
        digest = token_digest(token)
        cached = self._cache.get(digest, self._clock())
        if cached is not None:
            if await cached.source.is_current(cached.key):
                return cached.identity
            self._cache.discard(digest)

        header, claims = read_unverified(token)
        verifier = self._select_issuer(claims.get("iss"))
        verified = await verifier.verify(token, header)
        entry = CachedToken(verified.identity, verifier.keys, verified.key)
        self._cache.put(digest, entry, self._clock())
        return verified.identity

    def _select_issuer(self, issuer: object) -> IssuerVerifier:
        if None in self._by_issuer:
            return self._by_issuer[None]
        if not self._by_issuer:
            raise InvalidToken("This gateway accepts no tokens: auth.jwt lists no issuer.")
        if issuer is None:
            raise InvalidToken("The token lacks the required iss claim.")
        if not isinstance(issuer, str):
            raise InvalidToken("The token's iss claim must be a string.")
        verifier = self._by_issuer.get(issuer)
        if verifier is None:
            raise InvalidToken("The token's issuer (iss) is not accepted.")
        return verifier

    async def close(self) -> None:
        """Close the HTTP session if the authenticator created it."""
        if self._owns_session and self._session is not None:
            await self._session.close()
            self._session = None
            self._owns_session = False

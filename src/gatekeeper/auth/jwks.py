"""Signing keys fetched from an issuer's ``jwks_url`` and cached by the rules of ``jwks_cache``.

- The first token triggers the first fetch. Until a fetch succeeds, every token gets 401.
- A fetched key set is fresh for the response's ``Cache-Control: max-age`` minus its
  ``Age``, clamped to ``min_s``..``max_s`` (``min_s`` when there is no max-age). The first
  token after that triggers a refresh, so a key removed from the JWKS stops verifying
  tokens, cached tokens included.
- A token whose ``kid`` is not in the set triggers a refetch, then gets 401 if the kid is
  still unknown. Fetch attempts are at least ``refetch_s`` apart, whatever triggers them,
  so made-up kids or a failing IdP cannot make the gateway flood the IdP.
- When a refresh fails, the old keys keep verifying tokens for ``max_stale_s`` after their
  freshness ended. After that, tokens get 401 until a fetch succeeds.

Concurrent requests wait for one shared fetch instead of starting their own.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Callable, Mapping

import aiohttp
import structlog
import yarl

from gatekeeper.auth.keys import KeySet, VerificationKey, parse_jwks
from gatekeeper.config.model import JwksCache
from gatekeeper.errors import InvalidToken

# NOTE: requests that need a fetch wait for it, so a slow IdP delays them by up to this long.
FETCH_TIMEOUT_S = 5.0
MAX_DOCUMENT_BYTES = 1024 * 1024

log = structlog.get_logger("gatekeeper.auth")


class JwksFetchError(Exception):
    """A JWKS download that failed or returned something other than a JWK Set."""


def freshness_lifetime(headers: Mapping[str, str], policy: JwksCache) -> float:
    """Return how many seconds a fetched key set stays fresh.

    ``max-age`` minus ``Age`` (RFC 9111 section 4.2.3), or zero for ``no-cache`` and
    ``no-store``, clamped to ``policy.min_s``..``policy.max_s``. Without a usable max-age
    the lifetime is ``policy.min_s``.
    """
    max_age: float | None = None
    for directive in headers.get("Cache-Control", "").split(","):
        name, _, value = directive.strip().partition("=")
        name = name.lower()
        if name in ("no-cache", "no-store"):
            max_age = 0
            break
        if name == "max-age":
            try:
                max_age = int(value.strip().strip('"'))
            except ValueError:
                continue

    if max_age is None:
        return policy.min_s
    try:
        age = max(0, int(headers.get("Age", "0")))
    except ValueError:
        age = 0
    return min(max(max_age - age, policy.min_s), policy.max_s)


class JwksKeys:
    """A key source that fetches and caches one issuer's JWK Set."""

    def __init__(
        self,
        url: str,
        policy: JwksCache,
        session: Callable[[], aiohttp.ClientSession],
        clock: Callable[[], float],
    ) -> None:
        """Create the source. Nothing is fetched until the first token needs a key.

        Args:
            url: the JWKS URL, already checked to be https or loopback http.
            policy: the issuer's ``jwks_cache`` settings.
            session: returns the HTTP client session to fetch with.
            clock: returns the current time in seconds since the epoch.
        """
        self._url = url
        # Logged instead of the URL, because a user name and password in it are credentials.
        self._log_url = str(yarl.URL(url).with_user(None))
        self._policy = policy
        self._session = session
        self._clock = clock
        self._keys = KeySet(())
        self._fresh_until = -math.inf
        self._last_attempt = -math.inf
        self._lock = asyncio.Lock()

    async def key_set(self, kid: str | None) -> KeySet:
        """Return the usable keys, refreshing them when stale or when ``kid`` is unknown.

        Raises:
            InvalidToken: when no key set is usable (never fetched, or stale too long).
        """
        await self._refresh_if_expired()
        if kid is not None and not self._keys.has_kid(kid):
            await self._refetch_for_unknown_kid(kid)
        return self._usable_keys()

    async def is_current(self, key: VerificationKey) -> bool:
        """Return whether ``key`` is in the usable key set, refreshing it when stale.

        Raises:
            InvalidToken: when no key set is usable (never fetched, or stale too long).
        """
        await self._refresh_if_expired()
        return key in self._usable_keys()

    def _usable_keys(self) -> KeySet:
        if self._clock() < self._fresh_until + self._policy.max_stale_s:
            return self._keys
        raise InvalidToken(
            "The signing keys of the token's issuer could not be fetched. Try again later."
        )

    def _may_fetch(self) -> bool:
        return self._clock() - self._last_attempt >= self._policy.refetch_s

    async def _refresh_if_expired(self) -> None:
        if self._clock() < self._fresh_until:
            return
        async with self._lock:
            # Another request may have refreshed, or failed to, while this one waited.
            if self._clock() < self._fresh_until or not self._may_fetch():
                return
            await self._fetch()

    async def _refetch_for_unknown_kid(self, kid: str) -> None:
        async with self._lock:
            if self._keys.has_kid(kid) or not self._may_fetch():
                return
            log.info("jwks refetch for unknown kid", url=self._log_url)
            await self._fetch()

    async def _fetch(self) -> None:
        """Replace the key set with a fresh download, or keep the old one if that fails."""
        self._last_attempt = self._clock()
        try:
            document, lifetime = await self._download()
            keys, problems = parse_jwks(document)
        except (JwksFetchError, ValueError) as error:
            stale_until = self._fresh_until + self._policy.max_stale_s
            log.warning(
                "jwks fetch failed",
                url=self._log_url,
                error=str(error),
                cached_keys=len(self._keys),
                usable_until=stale_until if math.isfinite(stale_until) else None,
                retry_in_s=self._policy.refetch_s,
            )
            return

        for problem in problems:
            log.warning("jwks key skipped", url=self._log_url, problem=problem)
        self._keys = KeySet(keys)
        self._fresh_until = self._clock() + lifetime
        log.info("jwks fetched", url=self._log_url, keys=len(keys), fresh_for_s=lifetime)

    async def _download(self) -> tuple[object, float]:
        timeout = aiohttp.ClientTimeout(total=FETCH_TIMEOUT_S)
        try:
            # Redirects are not followed, so an https URL can never end on plain http.
            async with self._session().get(
                self._url,
                timeout=timeout,
                allow_redirects=False,
                headers={"Accept": "application/json"},
            ) as response:
                if response.status != 200:
                    raise JwksFetchError(f"the server responded with HTTP {response.status}")
                body = await _read_limited(response)
                lifetime = freshness_lifetime(response.headers, self._policy)
        except (aiohttp.ClientError, TimeoutError) as error:
            raise JwksFetchError(f"the request failed: {type(error).__name__} {error}") from error

        try:
            return json.loads(body), lifetime
        except ValueError as error:
            raise JwksFetchError("the response is not JSON") from error


async def _read_limited(response: aiohttp.ClientResponse) -> bytes:
    body = bytearray()
    async for chunk in response.content.iter_chunked(64 * 1024):
        body += chunk
        if len(body) > MAX_DOCUMENT_BYTES:
            raise JwksFetchError(f"the response is larger than {MAX_DOCUMENT_BYTES} bytes")
    return bytes(body)

"""Verified-token cache: a repeated token costs a dictionary lookup, not a signature check.

Entries are keyed by the SHA-256 of the token's exact bytes, so the cache contains no tokens,
and live until the token's ``exp``, without leeway. The cache is an LRU bounded by entry
count. A hit is served only while the signing key is still current in its key source,
which ``Authenticator`` checks, so a key removed from a JWKS also ends its cached tokens.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass

from gatekeeper.auth.identity import Identity
from gatekeeper.auth.keys import KeySource, VerificationKey

DEFAULT_TOKEN_CACHE_SIZE = 10_000


@dataclass(frozen=True, slots=True)
class CachedToken:
    """A verified token's identity and the key that verified it."""

    identity: Identity
    source: KeySource
    key: VerificationKey


def token_digest(token: str) -> bytes:
    """Return the cache key of a token."""
    return hashlib.sha256(token.encode("utf-8")).digest()


class TokenCache:
    """An LRU map from token digest to `CachedToken`, dropping entries at ``exp``."""

    def __init__(self, max_entries: int = DEFAULT_TOKEN_CACHE_SIZE) -> None:
        if max_entries < 0:
            raise ValueError(f"the token cache size must be 0 or more, got {max_entries}")
        self._max_entries = max_entries
        self._entries: OrderedDict[bytes, CachedToken] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, digest: bytes, now: float) -> CachedToken | None:
        """Return the entry for ``digest`` unless it is missing or its token has expired."""
        entry = self._entries.get(digest)
        if entry is None:
            return None
        if now >= entry.identity.expires_at:
            del self._entries[digest]
            return None
        self._entries.move_to_end(digest)
        return entry

    def put(self, digest: bytes, entry: CachedToken, now: float) -> None:
        """Store an entry, evicting the least recently used one when the cache is full.

        Tokens already past ``exp`` (accepted within the leeway) are not stored.
        """
        if self._max_entries == 0 or now >= entry.identity.expires_at:
            return
        self._entries[digest] = entry
        self._entries.move_to_end(digest)
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)

    def discard(self, digest: bytes) -> None:
        """Remove the entry for ``digest``, if any."""
        self._entries.pop(digest, None)

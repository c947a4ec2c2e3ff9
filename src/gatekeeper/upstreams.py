"""Target choice for upstreams with several URLs: round robin with a cool-down.

A target that could not be connected to is skipped for ``COOL_DOWN_S`` seconds. When every
target of an upstream is cooling down, all are tried anyway in round-robin order, so a
recovered upstream is found by the next request instead of after the cool-down.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

COOL_DOWN_S = 5.0


class Targets:
    """The URLs of one upstream, in the order a request should try them.

    Args:
        urls: the upstream's target URLs, as configured.
        cool_down_s: seconds a target that failed to connect is skipped.
        clock: monotonic seconds; tests pass their own.
    """

    def __init__(
        self,
        urls: Sequence[str],
        *,
        cool_down_s: float = COOL_DOWN_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not urls:
            raise ValueError("An upstream needs at least one target URL.")
        self._urls = tuple(url.rstrip("/") for url in urls)
        self._cool_down_s = cool_down_s
        self._clock = clock
        self._next = 0
        self._down_until: dict[str, float] = {}

    def order(self) -> list[str]:
        """Return the targets for the next request: round robin, cooling ones left out.

        Returns:
            Target base URLs without a trailing slash; never empty.
        """
        start = self._next
        self._next = (start + 1) % len(self._urls)
        rotated = list(self._urls[start:] + self._urls[:start])
        now = self._clock()
        ready = [url for url in rotated if self._down_until.get(url, 0.0) <= now]
        return ready or rotated

    def mark_down(self, url: str) -> None:
        """Skip ``url`` for the cool-down period after a failed connection attempt."""
        self._down_until[url] = self._clock() + self._cool_down_s

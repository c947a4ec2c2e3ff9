"""Unique ids for requests and charges, cheap enough to draw one per request.

An id is a random prefix, drawn once per process from ``os.urandom`` (96 bits), followed by
a counter in hex. Another process, the same process after a restart, and a forked child each
draw their own prefix, so two ids repeat only if two 96-bit draws collide. The prefix has a
fixed length, so prefix and counter never run together into another id.
"""

from __future__ import annotations

import itertools
import os

PREFIX_BYTES = 12

_prefix = ""
_counter = itertools.count()


def _draw_prefix() -> None:
    global _prefix, _counter
    _prefix = os.urandom(PREFIX_BYTES).hex()
    _counter = itertools.count(1)


def new_id() -> str:
    """Return an id that no other call in any process returns: 25 or more hex digits."""
    return f"{_prefix}{next(_counter):x}"


_draw_prefix()
os.register_at_fork(after_in_child=_draw_prefix)

"""Typed keys for state shared through aiohttp applications.

Kept apart from the modules that fill them so that the proxy app, the admin app and their
handlers can import the keys without importing each other.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from gatekeeper.ledger import Ledger
    from gatekeeper.runtime import RuntimeHolder

LEDGER: web.AppKey[Ledger] = web.AppKey("ledger")
RUNTIME: web.AppKey[RuntimeHolder] = web.AppKey("runtime")

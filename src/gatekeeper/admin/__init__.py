"""The admin API: pools, grants, health; served on its own listener.

``build_admin_app`` assembles the aiohttp application; handlers live by resource in
``pools`` and ``health``; request parsing in ``requests`` and ``schemas``; idempotency
keys in ``idempotency``.
"""

from gatekeeper.admin.app import build_admin_app

__all__ = ["build_admin_app"]

"""The admin API: pools, grants, transfers, usage, audit and health, on its own listener.

``build_admin_app`` assembles the aiohttp application. Handlers live by resource in
``pools``, ``transfers``, ``records`` and ``health``. Request parsing is in ``requests`` and
``schemas``, idempotency keys in ``idempotency``.
"""

from gatekeeper.admin.app import build_admin_app

__all__ = ["build_admin_app"]

"""Typed keys for the admin application's state and per-request values."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from gatekeeper.admin.idempotency import IdempotencyKeys

TOKENS: web.AppKey[Callable[[], Mapping[str, str]]] = web.AppKey("admin_tokens")
READY: web.AppKey[Callable[[], Awaitable[bool]]] = web.AppKey("admin_ready")
IDEMPOTENCY: web.AppKey[IdempotencyKeys] = web.AppKey("admin_idempotency")
ACTOR: web.RequestKey[str] = web.RequestKey("admin_actor")

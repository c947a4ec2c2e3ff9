"""structlog setup: JSON lines in production, key=value on a terminal.

Context variables (request id, tenant, route) are merged first, so every line of a request
carries them. Tokens and secrets are never passed to a logger.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

import structlog


def configure_logging(level: str | None = None, fmt: str | None = None) -> None:
    """Configure structlog and the standard library logging behind it.

    Args:
        level: log level name; default ``$GATEKEEPER_LOG_LEVEL`` or ``info``.
        fmt: ``json``, ``console`` or ``auto`` (console on a TTY); default
            ``$GATEKEEPER_LOG_FORMAT`` or ``auto``.
    """
    level_name = (level or os.environ.get("GATEKEEPER_LOG_LEVEL") or "info").upper()
    numeric = logging.getLevelName(level_name)
    if not isinstance(numeric, int):
        numeric = logging.INFO
    chosen = fmt or os.environ.get("GATEKEEPER_LOG_FORMAT") or "auto"
    if chosen == "auto":
        chosen = "console" if sys.stderr.isatty() else "json"

    renderer: Any
    if chosen == "console":
        renderer = structlog.dev.ConsoleRenderer(colors=False)
    else:
        renderer = structlog.processors.JSONRenderer()

    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    # aiohttp and redis-py log through the standard library; keep them at warning level.
    logging.basicConfig(
        level=max(numeric, logging.WARNING), stream=sys.stderr, format="%(message)s"
    )

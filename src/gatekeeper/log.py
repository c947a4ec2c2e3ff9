"""structlog setup: JSON lines in production, key=value on a terminal.

Context variables (request id, tenant, route) are merged first, so every line of a request
carries them. Records of the standard library's loggers (aiohttp, redis-py) go through the
same renderer, so a JSON log stays one JSON object per line, tracebacks included. Tokens
and secrets are never passed to a logger.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

import structlog
from aiohttp.http_exceptions import HttpProcessingError


class ClientErrorFilter(logging.Filter):
    """Drop aiohttp's tracebacks for requests its parser rejected with a 4xx.

    A malformed request is the client's error, already answered with 400; logging it at
    error level with a traceback would let any client flood the log.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        rejected = isinstance(error, HttpProcessingError) and 400 <= (error.code or 0) < 500
        return not rejected


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
    shared: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]

    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        # One write per line, so lines of several workers sharing stderr never interleave.
        logger_factory=structlog.WriteLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            renderer,
        ],
    ))
    handler.addFilter(ClientErrorFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    # aiohttp and redis-py log through the standard library; keep them at warning level.
    root.setLevel(max(numeric, logging.WARNING))

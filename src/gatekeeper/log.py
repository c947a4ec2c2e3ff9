"""structlog setup: JSON lines in production, key=value on a terminal.

Context variables (the worker's pid and index) are merged first, so every line carries
them. Records of the standard library's loggers (aiohttp, redis-py) go through the same
renderer, so a JSON log stays one JSON object per line, tracebacks included. Tokens and
secrets are never passed to a logger.

The canonical request line, written once per request, goes through ``request_log``: the
same renderer and output, with a shorter processor chain that reuses the formatted second
of its timestamp.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import MutableMapping
from typing import Any

import structlog
from aiohttp.http_exceptions import HttpProcessingError


class ClientErrorFilter(logging.Filter):
    """Drop aiohttp's tracebacks for requests its parser rejected with a 4xx.

    A malformed request is the client's error and already got a 400. Logging it at error
    level with a traceback would let any client flood the log.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        rejected = isinstance(error, HttpProcessingError) and 400 <= (error.code or 0) < 500
        return not rejected


# The canonical request line's logger; configure_logging replaces it.
request_log: Any = structlog.get_logger("gatekeeper.request")


class CachedTimeStamper:
    """Add ``timestamp`` as ISO 8601 UTC with microseconds, like ``TimeStamper(fmt="iso",
    utc=True)``, formatting the date and time only once per second."""

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def __call__(self, logger: Any, name: str,
                 event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        now = time.time()
        second = int(now)
        if second != self._second:
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second = second
        event_dict["timestamp"] = f"{self._prefix}.{int((now - second) * 1e6):06d}Z"
        return event_dict


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

    # The request line carries no exception, so it skips format_exc_info.
    global request_log
    request_log = structlog.wrap_logger(
        structlog.WriteLogger(sys.stderr),
        processors=[structlog.contextvars.merge_contextvars, structlog.processors.add_log_level,
                    CachedTimeStamper(), renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
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

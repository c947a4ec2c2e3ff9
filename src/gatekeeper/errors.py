"""Errors that end a request, each mapped to one HTTP status and problem+json type.

Handlers raise these, and the problem middleware of the proxy and admin apps turns them
into RFC 9457 responses. So no handler builds an error body by hand, and no stack trace
reaches a client.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar, Literal

PROBLEM_BASE = "https://gatekeeper.dev/problems/"


class GatekeeperError(Exception):
    """Base of every error that becomes an HTTP response."""

    status: ClassVar[int] = 500
    slug: ClassVar[str] = "internal"
    title: ClassVar[str] = "Internal error"

    def __init__(
        self,
        detail: str,
        *,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.headers = headers or {}
        self.extra = extra

    @property
    def type(self) -> str:
        return PROBLEM_BASE + self.slug

    def problem(self) -> dict[str, Any]:
        """Return the problem+json body of this error."""
        body: dict[str, Any] = {
            "type": self.type,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
        }
        body.update(self.extra)
        return body


class BadRequest(GatekeeperError):
    status = 400
    slug = "bad-request"
    title = "Bad request"


class Unauthorized(GatekeeperError):
    """A missing or invalid bearer token; carries the WWW-Authenticate challenge."""

    status = 401
    slug = "unauthorized"
    title = "Unauthorized"

    def __init__(self, detail: str, *, challenge: str, **extra: Any) -> None:
        super().__init__(detail, headers={"WWW-Authenticate": challenge}, **extra)


class MissingToken(Unauthorized):
    slug = "missing-token"
    title = "Missing bearer token"

    def __init__(self, detail: str = "This route requires a bearer token.") -> None:
        super().__init__(detail, challenge='Bearer realm="gatekeeper"')


class InvalidToken(Unauthorized):
    """A bearer token that failed verification. ``detail`` names the failed check."""

    slug = "invalid-token"
    title = "Invalid bearer token"

    def __init__(self, detail: str) -> None:
        super().__init__(
            detail,
            challenge=f'Bearer realm="gatekeeper", error="invalid_token", '
            f'error_description="{self._quoted_string_safe(detail)}"',
        )

    @staticmethod
    def _quoted_string_safe(text: str) -> str:
        # Callers pass a fixed phrase per failure kind, never token content. Characters that
        # could end the quoted string or the header line are still replaced, so that a
        # mistake cannot produce a broken or injected response header.
        safe: list[str] = []
        for char in text:
            if char == '"':
                safe.append("'")
            elif char == "\\" or not " " <= char <= "~":
                safe.append(" ")
            else:
                safe.append(char)
        return "".join(safe)


class Forbidden(GatekeeperError):
    """A valid token that may not use the route, such as one that lacks a required scope."""

    status = 403
    slug = "insufficient-scope"
    title = "Insufficient scope"

    # A scope-token as defined by RFC 6749 section 3.3: printable ASCII without space,
    # double quote or backslash, so it can stand inside a quoted header value.
    _SCOPE_TOKEN: ClassVar[re.Pattern[str]] = re.compile(r"[!#-\[\]-~]+")

    def __init__(
        self, detail: str, *, required_scopes: tuple[str, ...] = (), **extra: Any
    ) -> None:
        headers: dict[str, str] = {}
        if required_scopes:
            # RFC 6750 section 3.1: the challenge names the scopes the resource requires.
            # Names outside the scope-token grammar stay in the detail only.
            scope = " ".join(s for s in required_scopes if self._SCOPE_TOKEN.fullmatch(s))
            headers["WWW-Authenticate"] = (
                f'Bearer realm="gatekeeper", error="insufficient_scope", scope="{scope}"'
            )
        super().__init__(detail, headers=headers, **extra)


class PaymentRequired(GatekeeperError):
    """The pool cannot pay for the request; nothing was charged."""

    status = 402
    slug = "insufficient-tickets"
    title = "Insufficient tickets"

    def __init__(self, *, pool: str, cost: int, balance: int, detail: str | None = None) -> None:
        super().__init__(
            detail or f"Pool {pool!r} has {balance} tickets; this request costs {cost}.",
            headers={"Ticket-Cost": str(cost), "Ticket-Balance": str(balance)},
            pool=pool,
            cost=cost,
            balance=balance,
        )


class NotFound(GatekeeperError):
    status = 404
    slug = "not-found"
    title = "Not found"


class Conflict(GatekeeperError):
    status = 409
    slug = "conflict"
    title = "Conflict"


class PayloadTooLarge(GatekeeperError):
    status = 413
    slug = "payload-too-large"
    title = "Request body too large"


class Unprocessable(GatekeeperError):
    status = 422
    slug = "unprocessable"
    title = "Unprocessable request"


class BadGateway(GatekeeperError):
    status = 502
    slug = "upstream-unreachable"
    title = "Upstream unreachable"


class ServiceUnavailable(GatekeeperError):
    status = 503
    slug = "ledger-unavailable"
    title = "Ledger unavailable"

    def __init__(self, detail: str, *, retry_after_s: int = 1, **extra: Any) -> None:
        super().__init__(detail, headers={"Retry-After": str(retry_after_s)}, **extra)


class GatewayTimeout(GatekeeperError):
    status = 504
    slug = "upstream-timeout"
    title = "Upstream timeout"


LedgerErrorKind = Literal["timeout", "connection", "busy", "script", "response"]


class LedgerUnavailable(Exception):
    """A ledger call that failed; wraps the client error.

    Attributes:
        kind: one of

            - ``timeout``: no reply in time.
            - ``connection``: no connection, or it broke.
            - ``busy``: every connection of this process was in use for the whole wait.
            - ``response``: Redis rejected the command for a state that passes, such as
              READONLY during a failover or OOM.
            - ``script``: the call failed on its own input, such as an error raised by a
              ledger script, so a resend fails again.
        may_have_run: False only when the call certainly did not run on Redis, so a
            charge sent with it needs no refund.
    """

    def __init__(self, message: str, *, kind: LedgerErrorKind = "connection",
                 may_have_run: bool = True) -> None:
        super().__init__(message)
        self.kind: LedgerErrorKind = kind
        self.may_have_run = may_have_run


class ConfigError(Exception):
    """A configuration file that cannot be used; lists every problem found."""

    def __init__(self, file: str, problems: list[str]) -> None:
        self.file = file
        self.problems = problems
        super().__init__("\n".join(f"{file}: {problem}" for problem in problems))

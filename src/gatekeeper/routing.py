"""Route matching and path normalisation: pure functions over one config snapshot, no I/O.

``normalize_path`` turns a raw request path into the one form that is both matched and sent
upstream, so a route can never be bypassed by spelling its path differently (``%2e%2e``,
``//``, ``%41``). ``Router`` compiles the routes once: exact paths go into a dict and
prefixes into a trie of path segments, so a lookup costs one walk down the request's
segments however many routes the config has. ``resolve_pool`` lists the pools a request
may be charged to.

Precedence follows the config contract. An exact ``path`` beats any prefix, and among
prefixes the longest wins. For the same path, a route with ``methods`` beats one without,
and after that file order decides. ``match.host`` only filters.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from gatekeeper import errors
from gatekeeper.config.model import Route

# RFC 3986 section 2.3: decoding these never changes what a URI identifies.
UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
# Characters a path segment may contain without percent-encoding (RFC 3986 "pchar" minus "%").
SEGMENT_SAFE = frozenset(UNRESERVED | frozenset(b"!$&'()*+,;=:@"))
HEX_DIGITS = frozenset(b"0123456789abcdefABCDEF")
REPEATED_SLASHES = re.compile(r"/{2,}")
PLAIN_SEGMENT = re.compile(r"[A-Za-z0-9\-._~!$&'()*+,;=:@]*")
# A path of plain segments: no escape, no character to encode.
PLAIN_PATH = re.compile(r"[A-Za-z0-9\-._~!$&'()*+,;=:@/]*")


def normalize_path(raw_path: str) -> str:
    """Normalise a raw request path into the form that is matched and forwarded.

    The steps run in this order. First, percent-encoded unreserved characters are decoded
    and other escapes get uppercase hex. Then ``.`` and ``..`` segments are resolved. Last,
    repeated slashes are merged. ``%2F`` stays encoded inside its segment. Raw characters
    that a path may not contain (non-ASCII, ``"``, ``\\``, ``<``...) are percent-encoded as
    UTF-8.

    Args:
        raw_path: the path of the request target exactly as received, without the query.

    Returns:
        The normalised path, starting with ``/``.

    Raises:
        errors.BadRequest: the path does not start with ``/``, contains an invalid
            percent-escape, a NUL or another control character (raw or encoded), or
            climbs above the root with ``..``.
    """
    if not raw_path.startswith("/"):
        raise errors.BadRequest(f"Request path {raw_path[:100]!r} must start with '/'.")
    if PLAIN_PATH.fullmatch(raw_path) and "//" not in raw_path and "/." not in raw_path:
        # Nothing to decode, resolve or merge, which is the common case.
        return raw_path
    segments = [_normalize_segment(segment) for segment in raw_path[1:].split("/")]
    resolved = _remove_dot_segments(segments)
    return REPEATED_SLASHES.sub("/", "/" + "/".join(resolved))


def _normalize_segment(segment: str) -> str:
    """Decode unreserved escapes in one segment and encode what may not appear raw."""
    if PLAIN_SEGMENT.fullmatch(segment):
        return segment
    out: list[str] = []
    try:
        data = segment.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError as exc:
        raise errors.BadRequest(
            f"Request path segment {segment[:100]!r} is not valid UTF-8."
        ) from exc
    i = 0
    while i < len(data):
        byte = data[i]
        if byte == 0x25:  # "%"
            escape = data[i + 1 : i + 3]
            if len(escape) != 2 or not HEX_DIGITS.issuperset(escape):
                raise errors.BadRequest(
                    f"Request path segment {segment[:100]!r} contains an invalid percent-escape."
                )
            byte = int(escape, 16)
            _reject_control(byte, segment)
            out.append(chr(byte) if byte in UNRESERVED else f"%{byte:02X}")
            i += 3
            continue
        _reject_control(byte, segment)
        out.append(chr(byte) if byte in SEGMENT_SAFE else f"%{byte:02X}")
        i += 1
    return "".join(out)


def _reject_control(byte: int, segment: str) -> None:
    if byte < 0x20 or byte == 0x7F:
        raise errors.BadRequest(
            f"Request path segment {segment[:100]!r} contains control character {byte:#04x}."
        )


def _remove_dot_segments(segments: list[str]) -> list[str]:
    """Resolve ``.`` and ``..`` like RFC 3986 section 5.2.4, but reject climbing the root."""
    stack: list[str] = []
    last = len(segments) - 1
    for index, segment in enumerate(segments):
        if segment == "..":
            if not stack:
                raise errors.BadRequest("Request path climbs above the root with '..'.")
            stack.pop()
        elif segment != ".":
            stack.append(segment)
            continue
        # A path ending in a dot segment names a directory, so it keeps its trailing slash.
        if index == last:
            stack.append("")
    return stack


def _split_host(host: str) -> str:
    """Return a Host value lowercased, without its port and trailing dot."""
    host = host.strip().lower()
    if host.startswith("["):
        host = host.partition("]")[0] + "]"
    elif host.count(":") == 1:
        host = host.partition(":")[0]
    return host.rstrip(".")


@dataclass(frozen=True)
class _Entry:
    route: Route
    methods: frozenset[str] | None
    host: str | None

    def accepts(self, method: str, host: str | None) -> bool:
        if self.methods is not None and method not in self.methods:
            return False
        return self.host is None or self.host == host


@dataclass
class _Node:
    children: dict[str, _Node] = field(default_factory=dict)
    entries: list[_Entry] = field(default_factory=list)


class Router:
    """Compiled matcher over the routes of one config snapshot.

    Args:
        routes: the routes in file order.

    Raises:
        ValueError: a route's path pattern cannot be normalised (for example it climbs
            above the root).
    """

    def __init__(self, routes: Sequence[Route]) -> None:
        self._exact: dict[str, list[_Entry]] = {}
        self._root = _Node()
        for route in _by_precedence(routes):
            entry = _Entry(
                route=route,
                methods=frozenset(route.match.methods) if route.match.methods else None,
                host=_split_host(route.match.host) if route.match.host else None,
            )
            if route.match.path is not None:
                self._exact.setdefault(_compile_pattern(route), []).append(entry)
            else:
                self._prefix_node(_compile_pattern(route)).entries.append(entry)

    def _prefix_node(self, prefix: str) -> _Node:
        node = self._root
        for segment in _prefix_segments(prefix):
            node = node.children.setdefault(segment, _Node())
        return node

    def match(self, method: str, path: str, host: str | None) -> Route | None:
        """Find the route for a request.

        Args:
            method: the request method.
            path: the request path, already normalised by ``normalize_path``.
            host: the request's Host header, or None when it has none.

        Returns:
            The route with the highest precedence that accepts the method and host, or
            None when no route does.
        """
        method = method.upper()
        host_name = _split_host(host) if host else None
        for entry in self._exact.get(path, ()):
            if entry.accepts(method, host_name):
                return entry.route

        # Walk down the trie, remembering the deepest node with an accepting route.
        found = _first_accepting(self._root.entries, method, host_name)
        node = self._root
        for segment in path[1:].split("/"):
            child = node.children.get(segment)
            if child is None:
                break
            node = child
            found = _first_accepting(node.entries, method, host_name) or found
        return found


def _by_precedence(routes: Sequence[Route]) -> list[Route]:
    """Order routes so that, within one path, the first accepting one wins."""
    indexed = sorted(enumerate(routes), key=lambda pair: (pair[1].match.methods is None, pair[0]))
    return [route for _, route in indexed]


def _compile_pattern(route: Route) -> str:
    pattern = route.match.path if route.match.path is not None else route.match.path_prefix
    if pattern is None:
        raise ValueError(f"Route {route.name!r} sets neither match.path nor match.path_prefix.")
    try:
        return normalize_path(pattern)
    except errors.BadRequest as exc:
        message = f"Route {route.name!r} has an invalid path {pattern!r}: {exc.detail}"
        raise ValueError(message) from exc


def _prefix_segments(prefix: str) -> list[str]:
    # A trailing slash on a prefix is ignored, so "/v1/" and "/v1" are the same prefix.
    return [segment for segment in prefix.split("/") if segment]


def _first_accepting(entries: Iterable[_Entry], method: str, host: str | None) -> Route | None:
    for entry in entries:
        if entry.accepts(method, host):
            return entry.route
    return None


def resolve_pool(route: Route, tenant: str, team: str | None) -> tuple[str, ...]:
    """List the pools a request may be charged to, in the order the ledger tries them.

    Args:
        route: the matched route.
        tenant: the tenant id from the token.
        team: the team id from the token, or None when the token has none.

    Returns:
        ``(rendered template,)`` when the route sets ``pool``. Otherwise
        ``(tenant/team, tenant)`` with a team and ``(tenant,)`` without one.

    Raises:
        errors.Forbidden: the route's pool template uses ``{team}`` and the token has no team.
    """
    if route.pool is not None:
        if "{team}" in route.pool and team is None:
            raise errors.Forbidden(
                f"Route {route.name!r} charges a team pool ({route.pool}), "
                "but the token carries no team claim. Use a token issued for a team."
            )
        return (route.pool.replace("{tenant}", tenant).replace("{team}", team or ""),)
    if team is not None:
        return (f"{tenant}/{team}", tenant)
    return (tenant,)

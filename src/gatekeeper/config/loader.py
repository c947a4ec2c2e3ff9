"""Strict YAML loader: file → validated, frozen :class:`Config`.

Every problem is reported as ``FILE: PATH: message (got VALUE)``, where PATH is the dotted
location an operator can search for, such as ``routes[1].cost``. Duplicate mapping keys are
errors too, because YAML would otherwise keep the last one silently.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from gatekeeper.config.model import Config
from gatekeeper.errors import BadRequest, ConfigError
from gatekeeper.routing import normalize_path


class DuplicateKey(yaml.YAMLError):
    """A mapping names the same key twice."""


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that rejects a mapping key written twice."""


def _construct_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    mapping: dict[Any, Any] = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node)
        if key in mapping:
            line = key_node.start_mark.line + 1
            raise DuplicateKey(f"line {line}: duplicate key {key!r}")
        mapping[key] = loader.construct_object(value_node)
    return mapping


_UniqueKeyLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
    _construct_mapping,
)


def format_location(location: tuple[int | str, ...]) -> str:
    """Render a pydantic error location as ``routes[1].match.path``."""
    text = ""
    for part in location:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text or "(top level)"


def _resolve(document: Any, location: tuple[int | str, ...]) -> tuple[tuple[int | str, ...], Any]:
    """Follow ``location`` into the YAML document and return the path as written and the value.

    A key that accepts one item or a list (``auth.jwt``, ``upstreams.NAME.url``) was written
    as one item when pydantic reports index 0 of a non-list, so that index is dropped.
    """
    node = document
    written: list[int | str] = []
    for part in location:
        if isinstance(part, int) and not isinstance(node, list) and part == 0:
            continue
        written.append(part)
        try:
            node = node[part]
        except (KeyError, IndexError, TypeError):
            return tuple(written), _MISSING
    return tuple(written), node


_MISSING = object()


def _describe(error: Any, document: Any) -> str:
    location, value = _resolve(document, tuple(error["loc"]))
    message = error["msg"]
    if message.startswith("Value error, "):
        message = message[len("Value error, "):]
    if error["type"] == "extra_forbidden":
        message = "unknown key"
    elif error["type"] == "missing":
        return f"{format_location(location)}: required key is missing"
    if value is _MISSING or isinstance(value, dict):
        # A rule about a whole mapping names its path; echoing the mapping would only add noise.
        return f"{format_location(location)}: {message}"
    return f"{format_location(location)}: {message} (got {value!r})"


def _cross_check(document: dict[str, Any]) -> list[str]:
    """Check rules that span several keys: unique route names, known upstreams, patterns.

    These run on the YAML document itself, so they are reported together with the
    problems of single fields instead of only after those are fixed.
    """
    routes = document.get("routes")
    upstreams = document.get("upstreams")
    if not isinstance(routes, list):
        return []
    problems: list[str] = []
    seen: dict[str, int] = {}
    for index, route in enumerate(routes):
        if not isinstance(route, dict):
            continue
        name = route.get("name")
        if isinstance(name, str) and name in seen:
            problems.append(
                f"routes[{index}].name: duplicate route name, first used by "
                f"routes[{seen[name]}] (got {name!r})"
            )
        elif isinstance(name, str):
            seen[name] = index
        match = route.get("match")
        if isinstance(match, dict):
            problems.extend(_check_pattern(index, match.get("path"), match.get("path_prefix")))
        upstream = route.get("upstream")
        if isinstance(upstream, str) and isinstance(upstreams, dict) and upstream not in upstreams:
            known = ", ".join(sorted(map(str, upstreams))) or "none defined"
            problems.append(
                f"routes[{index}].upstream: unknown upstream, known: {known} (got {upstream!r})"
            )
    return problems


def _check_pattern(index: int, path: object, prefix: object) -> list[str]:
    """Check that a route's pattern normalises the way request paths do."""
    key, pattern = ("path", path) if path is not None else ("path_prefix", prefix)
    if not isinstance(pattern, str) or not pattern.startswith("/"):
        return []
    try:
        normalize_path(pattern)
    except BadRequest as error:
        return [f"routes[{index}].match.{key}: {error.detail} (got {pattern!r})"]
    return []


def parse_config(text: str, file: str = "<config>") -> Config:
    """Parse and validate config text.

    Args:
        text: YAML source.
        file: name used at the start of every error message.

    Returns:
        The frozen configuration.

    Raises:
        ConfigError: listing every problem found, each with its path and value.
    """
    try:
        document = yaml.load(text, Loader=_UniqueKeyLoader)
    except DuplicateKey as exc:
        raise ConfigError(file, [str(exc)]) from None
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc)
        line = f"line {where.line + 1}: " if where is not None else ""
        raise ConfigError(file, [f"{line}invalid YAML: {problem}"]) from None
    if document is None:
        document = {}
    if not isinstance(document, dict):
        kind = type(document).__name__
        raise ConfigError(file, [f"(top level): expected a mapping of keys, got a {kind}"])

    problems = _cross_check(document)
    try:
        config = Config.model_validate(document)
    except ValidationError as exc:
        problems = [_describe(error, document) for error in exc.errors()] + problems
    if problems:
        raise ConfigError(file, problems)
    return config


def config_warnings(config: Config) -> list[str]:
    """List settings that are valid but leave the gateway unable to serve anyone."""
    warnings: list[str] = []
    if not config.routes:
        warnings.append("routes: no routes are defined, so every request gets 404")
    if not config.auth.jwt and any(route.auth == "jwt" for route in config.routes):
        warnings.append("auth.jwt: no issuer is configured, so every route with auth: jwt "
                        "answers 401")
    if not config.admin.token_env and not config.admin.tokens:
        warnings.append("admin: no token_env or tokens, so every /admin/v1 call answers 401")
    return warnings


def load_config(path: str | Path) -> Config:
    """Read and validate the config file at ``path``.

    Raises:
        ConfigError: when the file cannot be read or is invalid.
    """
    name = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(name, [f"cannot read the file: {exc.strerror}"]) from exc
    return parse_config(text, name)

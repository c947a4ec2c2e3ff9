"""The running configuration: one immutable snapshot of compiled parts, swapped whole on reload.

A request reads ``holder.current`` once and keeps that snapshot until it ends, so a reload
never changes the rules under a request in flight.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from gatekeeper.auth import Authenticator
from gatekeeper.config import Config, parse_config
from gatekeeper.errors import ConfigError
from gatekeeper.proxy import Forwarder
from gatekeeper.routing import Router


@dataclass(frozen=True, slots=True)
class Source:
    """A config file's text and where it came from."""

    path: str
    text: str

    @property
    def version(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()[:16]


def read_source(path: str | Path) -> Source:
    """Read a config file, raising ConfigError naming the file when it cannot be read."""
    name = str(path)
    try:
        return Source(name, Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(name, [f"cannot read the file: {exc.strerror}"]) from exc


def admin_tokens(config: Config, env: Mapping[str, str], file: str) -> dict[str, str]:
    """Map each admin bearer token to the actor recorded in the audit stream.

    Raises:
        ConfigError: when a named environment variable is unset or empty.
    """
    named: dict[str, str] = {}
    if config.admin.token_env:
        named["admin"] = config.admin.token_env
    for actor, variable in (config.admin.tokens or {}).items():
        named[actor] = variable

    tokens: dict[str, str] = {}
    problems: list[str] = []
    for actor, variable in named.items():
        value = env.get(variable, "")
        if not value:
            problems.append(f"admin: environment variable {variable} for actor {actor!r} is unset")
        else:
            tokens[value] = actor
    if problems:
        raise ConfigError(file, problems)
    return tokens


@dataclass(slots=True)
class Snapshot:
    """Everything a request needs from the configuration, compiled once."""

    config: Config
    source: Source
    router: Router
    authenticator: Authenticator
    forwarder: Forwarder
    admin_tokens: Mapping[str, str]
    loaded_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    @property
    def version(self) -> str:
        return self.source.version

    async def start(self) -> None:
        await self.forwarder.start()

    async def close(self) -> None:
        await self.forwarder.close()
        await self.authenticator.close()


def build_snapshot(source: Source, env: Mapping[str, str] | None = None) -> Snapshot:
    """Validate config text and compile it into a snapshot.

    Raises:
        ConfigError: when the config or the secrets it names are invalid.
    """
    environment = os.environ if env is None else env
    config = parse_config(source.text, source.path)
    try:
        authenticator = Authenticator(config.auth.jwt, env=environment)
    except ValueError as exc:
        raise ConfigError(source.path, [f"auth.jwt: {exc}"]) from exc
    return Snapshot(
        config=config,
        source=source,
        router=Router(config.routes),
        authenticator=authenticator,
        forwarder=Forwarder(config.upstreams, config.proxy),
        admin_tokens=admin_tokens(config, environment, source.path),
    )


class RuntimeHolder:
    """Holds the current snapshot; reload replaces it in one assignment."""

    def __init__(self, snapshot: Snapshot) -> None:
        self.current = snapshot

"""The running configuration: one immutable snapshot of compiled parts, swapped whole on reload.

A request reads ``holder.current`` once, counts itself in with ``Snapshot.enter`` and keeps
that snapshot until it ends, so a reload never changes the rules under a request in flight.
A snapshot replaced by a reload is closed by ``Snapshot.retire`` only after its last request
has called ``Snapshot.leave``, because its upstream session still carries those requests.
"""

from __future__ import annotations

import asyncio
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
            problems.append(
                f"admin: environment variable {variable} for actor {actor!r} is unset or empty"
            )
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
    in_flight: int = 0
    _drained: asyncio.Event | None = None

    @property
    def version(self) -> str:
        return self.source.version

    def enter(self) -> None:
        """Count a request that started on this snapshot."""
        self.in_flight += 1

    def leave(self) -> None:
        """Count a request on this snapshot as finished."""
        self.in_flight -= 1
        if self.in_flight == 0 and self._drained is not None:
            self._drained.set()

    async def start(self) -> None:
        await self.forwarder.start()

    async def retire(self) -> None:
        """Wait until no request uses this snapshot any more, then close it."""
        if self.in_flight > 0:
            self._drained = asyncio.Event()
            await self._drained.wait()
        await self.close()

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
        authenticator = Authenticator(config.auth.jwt, env=environment,
                                      cache_size=config.auth.token_cache_size)
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


def restart_required(running: Config, candidate: Config) -> list[str]:
    """List the changes between two configs that a reload cannot apply.

    ``listen``, ``server`` and ``redis`` belong to the supervisor's sockets, processes and
    connections. ``ledger.journal_path`` names the open journal files, and each worker's
    ledger keeps the ``ledger.charge_ttl_s`` it started with.

    Returns:
        One message per changed section, empty when a reload can apply ``candidate``.
    """
    changed = [name for name in ("listen", "server", "redis")
               if getattr(running, name) != getattr(candidate, name)]
    for name in ("journal_path", "charge_ttl_s"):
        if getattr(running.ledger, name) != getattr(candidate.ledger, name):
            changed.append(f"ledger.{name}")
    return [f"{name}: changed; restart the gateway to apply it, a reload cannot"
            for name in changed]


class RuntimeHolder:
    """Holds the current snapshot; reload replaces it in one assignment."""

    def __init__(self, snapshot: Snapshot) -> None:
        self.current = snapshot

    def swap(self, snapshot: Snapshot) -> Snapshot:
        """Make ``snapshot`` current and return the one it replaces."""
        previous, self.current = self.current, snapshot
        return previous

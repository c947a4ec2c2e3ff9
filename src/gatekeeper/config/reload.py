"""Hot reload: read the config file, validate it fully, then swap one immutable snapshot.

Three triggers lead here: SIGHUP, a change of the file (``FileWatcher`` polls its mtime,
size and content hash once a second) and ``POST /admin/v1/config/reload``. Each attempt
ends with one ``ReloadResult``:

- ``applied``: the new snapshot is current. Requests in flight finish on the snapshot they
  started with, which is closed once the last of them ends.
- ``unchanged``: the file contains the running version (same content hash).
- ``invalid``: the file cannot be read or fails validation; the running snapshot stays.
- ``restart_required``: the file changes ``listen``, ``server``, ``redis``,
  ``ledger.journal_path`` or ``ledger.charge_ttl_s``; the running snapshot stays.

A reload never touches the ledger: balances, pools and grants live in Redis only.
With several workers the supervisor validates the file first and then sends SIGHUP to each
worker, which reloads the text the supervisor accepted (see ``gatekeeper.supervisor``).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import structlog

from gatekeeper import metrics
from gatekeeper.config.model import Config
from gatekeeper.errors import ConfigError
from gatekeeper.runtime import (
    RuntimeHolder,
    Snapshot,
    Source,
    build_snapshot,
    read_source,
    restart_required,
)

log = structlog.get_logger("gatekeeper.reload")

Result = Literal["applied", "unchanged", "invalid", "restart_required"]
WATCH_INTERVAL_S = 1.0


@dataclass(frozen=True, slots=True)
class ReloadResult:
    """The outcome of one reload attempt.

    Attributes:
        result: ``applied``, ``unchanged``, ``invalid`` or ``restart_required``.
        file: the config file that was read.
        version: the content hash of the version running after the attempt.
        problems: for a rejected attempt, one message per problem, each naming the path.
    """

    result: Result
    file: str
    version: str
    problems: tuple[str, ...] = ()

    @property
    def accepted(self) -> bool:
        return self.result in ("applied", "unchanged")


class ReloadRejected(Exception):
    """A candidate config that must not replace the running one."""

    def __init__(self, result: Result, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.result: Result = result
        self.problems = problems


def build_candidate(running: Config, source: Source, env: Mapping[str, str] | None = None
                    ) -> Snapshot:
    """Validate ``source`` as a replacement for the running config and compile it.

    Args:
        running: the config now in use.
        source: the candidate file's path and text.
        env: environment for secrets; defaults to ``os.environ``.

    Returns:
        The new snapshot, not yet started.

    Raises:
        ReloadRejected: when the candidate is invalid or changes what needs a restart.
    """
    try:
        snapshot = build_snapshot(source, env)
    except ConfigError as error:
        raise ReloadRejected("invalid", error.problems) from error
    problems = restart_required(running, snapshot.config)
    if problems:
        raise ReloadRejected("restart_required", problems)
    return snapshot


def record_result(result: ReloadResult, trigger: str, previous: str) -> None:
    """Log one reload attempt and count it in ``gatekeeper_config_reloads_total``."""
    metrics.CONFIG_RELOADS.labels(result.result).inc()
    if result.result == "applied":
        metrics.CONFIG_RELOAD_SUCCESS.set(time.time())
        log.info("config_reloaded", trigger=trigger, file=result.file, version=result.version,
                 previous=previous)
    elif result.result == "unchanged":
        log.info("config_unchanged", trigger=trigger, file=result.file, version=result.version)
    else:
        log.error("config_reload_failed", trigger=trigger, file=result.file,
                  result=result.result, problems=list(result.problems),
                  running_version=result.version)


class Reloader:
    """Applies reloads to one process's ``RuntimeHolder``, one attempt at a time.

    Args:
        holder: the process's running snapshot.
        env: environment for secrets; defaults to ``os.environ``.
        accepted_source: reads the text that SIGHUP applies. Standalone, that is the config
            file; under a supervisor, the copy the supervisor validated.
        on_applied: called with each snapshot that became current, after the swap.
        on_admin_applied: called with the version after the admin call applied a config,
            so the supervisor can bring the other workers to it.
    """

    def __init__(
        self,
        holder: RuntimeHolder,
        *,
        env: Mapping[str, str] | None = None,
        accepted_source: Callable[[], Source] | None = None,
        on_applied: Callable[[Snapshot], None] | None = None,
        on_admin_applied: Callable[[str], None] | None = None,
    ) -> None:
        self.holder = holder
        self.env = env
        self._accepted_source = accepted_source or self.file_source
        self._on_applied = on_applied
        self._on_admin_applied = on_admin_applied
        self._lock = asyncio.Lock()
        self._retiring: set[asyncio.Task[None]] = set()
        self.last: ReloadResult | None = None

    def file_source(self) -> Source:
        """Read the config file the running snapshot came from."""
        return read_source(self.holder.current.source.path)

    async def reload(self, trigger: str) -> ReloadResult:
        """Reload from the file (``admin``, ``file_change``) or the accepted copy (``sighup``).

        Under a supervisor, a SIGHUP reload applies a text the supervisor already validated
        and counted, so it is logged and counted here only when it fails.

        Returns:
            The outcome; the running snapshot changed only when it is ``applied``.
        """
        read = self._accepted_source if trigger == "sighup" else self.file_source
        async with self._lock:
            previous = self.holder.current.version
            result = await self._attempt(read)
        counted_elsewhere = trigger == "sighup" and read is not self.file_source
        if not counted_elsewhere or not result.accepted:
            record_result(result, trigger, previous)
        elif result.result == "applied":
            log.info("config_reloaded", trigger=trigger, file=result.file,
                     version=result.version, previous=previous)
        if trigger == "admin" and result.result == "applied" and self._on_admin_applied:
            self._on_admin_applied(result.version)
        # A second signal for a version already applied must not hide that it was applied.
        repeated = (result.result == "unchanged" and self.last is not None
                    and self.last.result == "applied" and self.last.version == result.version)
        if not repeated:
            self.last = result
        return result

    async def _attempt(self, read: Callable[[], Source]) -> ReloadResult:
        running = self.holder.current
        file = running.source.path
        try:
            source = read()
        except ConfigError as error:
            return ReloadResult("invalid", error.file, running.version, tuple(error.problems))
        if source.version == running.version:
            return ReloadResult("unchanged", source.path, running.version)
        try:
            candidate = build_candidate(running.config, source, self.env)
        except ReloadRejected as error:
            return ReloadResult(error.result, file, running.version, tuple(error.problems))
        await candidate.start()
        previous = self.holder.swap(candidate)
        task = asyncio.get_running_loop().create_task(self._retire(previous))
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)
        if self._on_applied is not None:
            self._on_applied(candidate)
        return ReloadResult("applied", source.path, candidate.version)

    @staticmethod
    async def _retire(snapshot: Snapshot) -> None:
        waiting = snapshot.in_flight
        await snapshot.retire()
        log.info("snapshot_closed", version=snapshot.version, drained_requests=waiting)

    async def close(self) -> None:
        """Wait for replaced snapshots to drain and close."""
        if self._retiring:
            await asyncio.gather(*self._retiring)


class FileWatcher:
    """Notices changes of a config file by polling its mtime, size and content hash.

    Args:
        path: the config file.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._stat: tuple[int, int] | None = None
        self._digest: str | None = None
        self.poll()

    def poll(self) -> bool:
        """Return True when the file's content differs from the previous poll.

        A file that cannot be read counts as unchanged, so a half-finished edit or a brief
        rename is not reported until the file is back.
        """
        try:
            stat = os.stat(self.path)
        except OSError:
            return False
        key = (stat.st_mtime_ns, stat.st_size)
        if key == self._stat:
            return False
        self._stat = key
        try:
            digest = hashlib.sha256(self.path.read_bytes()).hexdigest()
        except OSError:
            return False
        changed = self._digest is not None and digest != self._digest
        self._digest = digest
        return changed


async def watch_file(path: str | Path, on_change: Callable[[], object],
                     interval_s: float = WATCH_INTERVAL_S) -> None:
    """Call ``on_change`` whenever the file changes; runs until cancelled."""
    watcher = FileWatcher(path)
    while True:
        await asyncio.sleep(interval_s)
        if watcher.poll():
            result = on_change()
            if asyncio.iscoroutine(result):
                await result

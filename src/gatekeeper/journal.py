"""Durable local journal of ledger operations that Redis could not take when they happened.

While Redis fails, ``fail_open`` routes still forward requests. Their charges are appended
here, as are refunds and settlements that could not reach Redis, and
``gatekeeper.metering`` replays them later. Each process writes its own segment file
``journal-<pid>-<ms>.jsonl`` under ``ledger.journal_path`` and holds an exclusive ``flock``
on it. A segment whose lock is free belongs to a process that has exited; the next process
to start, or a running one when Redis comes back, adopts it and replays what it still holds.

File format, one JSON object per line:

- ``{"seq": 1, "op": "charge", "id": ..., "tenant": ..., "pools": [...], "cost": 3,
  "route": ..., "critical": false, "shadow": false}``: a deferred charge.
- ``{"seq": 2, "op": "refund", "id": ..., "tenant": ..., "route": ..., "cost": 3,
  "not_before": <unix ms>}``: refund this charge id if the charge ran.
- ``{"seq": 3, "op": "settle", "id": ..., "tenant": ..., "route": ..., "cost": 3,
  "actual": 5}``: settle this charge id to its actual cost.
- ``{"op": "done", "seq": 1}``: entry 1 of this file was replayed.

Appends are group-committed: the entries of one event-loop tick are written and fsynced
together in a thread, and ``write`` returns once they are on disk.

NOTE: the journal needs a local file system; ``flock`` on network file systems may not
exclude a second host.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import structlog

log = structlog.get_logger("gatekeeper.journal")

Operation = Literal["charge", "refund", "settle"]
SEGMENT_GLOB = "journal-*.jsonl"
# A segment with nothing left to replay is replaced by a fresh one once it is this large.
ROTATE_BYTES = 1024 * 1024


class JournalError(Exception):
    """The journal could not write an entry to disk; the entry is not durable."""


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(slots=True, eq=False)
class Entry:
    """One ledger operation waiting for Redis.

    Attributes:
        op: ``charge``, ``refund`` (if the charge exists) or ``settle``.
        charge_id: the charge id the operation is about.
        tenant: the tenant of the charge.
        route: the route name, for usage counters and metrics.
        cost: tickets of the charge (for a refund or settle: as charged at request time).
        pools: candidate pools of a charge, in order.
        critical: the route's ``critical`` flag.
        shadow: the route's ``shadow`` flag.
        actual: the actual cost of a settle.
        not_before: Unix ms before which the entry is not replayed.
        seq: position in its segment, set when the entry is written.
        segment: the segment file holding the entry.
    """

    op: Operation
    charge_id: str
    tenant: str
    route: str
    cost: int
    pools: tuple[str, ...] = ()
    critical: bool = False
    shadow: bool = False
    actual: int = 0
    not_before: int = 0
    seq: int = 0
    segment: Segment | None = field(default=None, repr=False)

    @property
    def pool(self) -> str:
        """The pool a deferred charge is bounded by: its first candidate."""
        return self.pools[0] if self.pools else self.tenant

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"seq": self.seq, "op": self.op, "id": self.charge_id,
                                "tenant": self.tenant, "route": self.route, "cost": self.cost}
        if self.op == "charge":
            body.update(pools=list(self.pools), critical=self.critical, shadow=self.shadow)
        elif self.op == "settle":
            body["actual"] = self.actual
        if self.not_before:
            body["not_before"] = self.not_before
        return body

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> Entry:
        """Build an entry from one parsed line.

        Raises:
            KeyError, TypeError, ValueError: for a line that is not a journal entry.
        """
        op = body["op"]
        if op not in ("charge", "refund", "settle"):
            raise ValueError(f"unknown journal operation {op!r}")
        return cls(op=op, charge_id=str(body["id"]), tenant=str(body["tenant"]),
                   route=str(body["route"]), cost=int(body["cost"]),
                   pools=tuple(str(pool) for pool in body.get("pools", ())),
                   critical=bool(body.get("critical", False)),
                   shadow=bool(body.get("shadow", False)), actual=int(body.get("actual", 0)),
                   not_before=int(body.get("not_before", 0)), seq=int(body["seq"]))


class Segment:
    """One journal file, opened for appending and locked by this process."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self.fd = fd
        self.next_seq = 1
        self.pending = 0

    @classmethod
    def create(cls, directory: Path) -> Segment:
        path = directory / f"journal-{os.getpid()}-{now_ms()}.jsonl"
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return cls(path, fd)

    @classmethod
    def adopt(cls, path: Path) -> Segment | None:
        """Lock the segment of an exited process; None when a live process holds it."""
        try:
            fd = os.open(path, os.O_RDWR | os.O_APPEND)
        except FileNotFoundError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        return cls(path, fd)

    def append(self, data: bytes) -> None:
        """Write ``data`` and fsync it; runs in a worker thread."""
        view = memoryview(data)
        while view:
            written = os.write(self.fd, view)
            view = view[written:]
        os.fsync(self.fd)

    def size(self) -> int:
        return os.fstat(self.fd).st_size

    def close(self, *, delete: bool) -> None:
        if delete:
            # Unlink before unlocking, so no other process adopts a file being removed.
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
        os.close(self.fd)


def read_pending(path: Path) -> tuple[list[Entry], int]:
    """Return the entries of a segment that have no done marker, and the highest seq.

    Lines that are not valid entries (a torn last line after a crash) are logged and skipped.
    """
    entries: dict[int, Entry] = {}
    done: set[int] = set()
    highest = 0
    for number, raw in enumerate(path.read_bytes().splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            body = json.loads(raw)
            seq = int(body["seq"])
            if body["op"] == "done":
                done.add(seq)
                continue
            entries[seq] = Entry.from_json(body)
        except (ValueError, KeyError, TypeError) as error:
            log.error("journal_line_invalid", file=str(path), line=number, error=str(error))
            continue
        highest = max(highest, seq)
    return [entry for seq, entry in entries.items() if seq not in done], highest


class Journal:
    """The process's journal: its own segment, adopted segments and the pending entries.

    Args:
        directory: ``ledger.journal_path``; created with mode 0700 when missing.
    """

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self._own: Segment | None = None
        self._adopted: list[Segment] = []
        self._pending: list[Entry] = []
        # Lines waiting for the next flush, by segment, with the entry each line adds (None
        # for a done marker).
        self._buffer: dict[Segment, list[tuple[bytes, Entry | None]]] = {}
        self._waiters: list[asyncio.Future[None]] = []
        self._flusher: asyncio.Task[None] | None = None
        self._opened = False

    def open(self) -> list[Entry]:
        """Create the directory and adopt segments of exited processes.

        This process's own segment is created with its first entry, so a gateway that never
        loses Redis leaves no files behind.

        Returns:
            The adopted entries that still wait for replay.

        Raises:
            OSError: when the directory cannot be created or read.
        """
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._opened = True
        return self.adopt_orphans()

    def adopt_orphans(self) -> list[Entry]:
        """Adopt every segment whose owner has exited; return its entries still to replay."""
        adopted: list[Entry] = []
        owned = {segment.path for segment in self._adopted}
        if self._own is not None:
            owned.add(self._own.path)
        for path in sorted(self.directory.glob(SEGMENT_GLOB)):
            if path in owned:
                continue
            segment = Segment.adopt(path)
            if segment is None:
                continue
            entries, highest = read_pending(path)
            if not entries:
                segment.close(delete=True)
                continue
            segment.next_seq = highest + 1
            segment.pending = len(entries)
            for entry in entries:
                entry.segment = segment
            self._adopted.append(segment)
            self._pending.extend(entries)
            adopted.extend(entries)
            log.warning("journal_adopted", file=str(path), entries=len(entries))
        return adopted

    @property
    def pending_count(self) -> int:
        return len(self._pending)

    def ready(self, now: int | None = None) -> list[Entry]:
        """Return the pending entries whose ``not_before`` has passed, oldest first."""
        moment = now_ms() if now is None else now
        return [entry for entry in self._pending if entry.not_before <= moment]

    def next_ready_at(self) -> int | None:
        """Return the Unix ms when the next pending entry becomes ready, or None if none."""
        return min((entry.not_before for entry in self._pending), default=None)

    async def write(self, entry: Entry) -> None:
        """Append ``entry`` and return once it is on disk.

        Raises:
            JournalError: when the write or fsync failed; the entry is then dropped.
        """
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        self.add(entry)
        await waiter

    def add(self, entry: Entry) -> None:
        """Append ``entry`` without waiting; it reaches the disk with the next flush."""
        segment = self._own_segment()
        entry.segment = segment
        entry.seq = segment.next_seq
        segment.next_seq += 1
        segment.pending += 1
        self._pending.append(entry)
        self._queue(segment, entry.to_json(), entry)

    def _own_segment(self) -> Segment:
        if self._own is None:
            if not self._opened:
                raise JournalError("The journal is not open.")
            try:
                self._own = Segment.create(self.directory)
            except OSError as error:
                raise JournalError(f"cannot create a journal file in {self.directory}: "
                                   f"{error.strerror}") from error
            log.info("journal_segment_created", file=str(self._own.path))
        return self._own

    def mark_done(self, entries: list[Entry]) -> None:
        """Record that ``entries`` were replayed, so no process replays them again."""
        finished = set(entries)
        self._pending = [entry for entry in self._pending if entry not in finished]
        for entry in entries:
            if entry.segment is not None:
                entry.segment.pending -= 1
                self._queue(entry.segment, {"op": "done", "seq": entry.seq}, None)

    def _queue(self, segment: Segment, body: dict[str, Any], entry: Entry | None) -> None:
        line = json.dumps(body, separators=(",", ":")).encode() + b"\n"
        self._buffer.setdefault(segment, []).append((line, entry))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.get_running_loop().create_task(self._flush_loop())

    async def _flush_loop(self) -> None:
        while self._buffer:
            batch, self._buffer = self._buffer, {}
            waiters, self._waiters = self._waiters, []
            try:
                await asyncio.to_thread(self._write_batch, batch)
            except OSError as error:
                log.error("journal_write_failed", error=str(error),
                          files=[str(segment.path) for segment in batch])
                self._forget_unwritten(batch)
                for waiter in waiters:
                    if not waiter.done():
                        waiter.set_exception(JournalError(f"journal write failed: {error}"))
                continue
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)
            self._tidy(batch)

    @staticmethod
    def _write_batch(batch: dict[Segment, list[tuple[bytes, Entry | None]]]) -> None:
        for segment, lines in batch.items():
            segment.append(b"".join(line for line, _entry in lines))

    def _forget_unwritten(self, batch: dict[Segment, list[tuple[bytes, Entry | None]]]) -> None:
        # The callers of ``write`` get JournalError and act as if the entry never existed.
        # NOTE: part of a failed batch may still be on disk and replayed by a later process;
        # a torn line is skipped by ``read_pending``.
        unwritten = {id(entry) for lines in batch.values() for _line, entry in lines if entry}
        remaining = []
        for entry in self._pending:
            if id(entry) in unwritten:
                if entry.segment is not None:
                    entry.segment.pending -= 1
            else:
                remaining.append(entry)
        self._pending = remaining

    def _tidy(self, batch: dict[Segment, list[tuple[bytes, Entry | None]]]) -> None:
        """Delete adopted segments that are fully replayed and rotate a large idle segment."""
        for segment in list(self._adopted):
            if segment.pending == 0 and segment in batch:
                self._adopted.remove(segment)
                segment.close(delete=True)
                log.info("journal_segment_replayed", file=str(segment.path))
        own = self._own
        if own is not None and own.pending == 0 and own in batch and own.size() >= ROTATE_BYTES:
            # The next entry creates a fresh segment.
            self._own = None
            own.close(delete=True)
            log.info("journal_rotated", file=str(own.path))

    async def flush(self) -> None:
        """Wait until everything appended so far is on disk."""
        while self._flusher is not None and not self._flusher.done():
            await asyncio.shield(self._flusher)

    async def close(self) -> None:
        """Flush, then close every segment; a segment with nothing pending is deleted."""
        await self.flush()
        for segment in self._segments():
            segment.close(delete=segment.pending == 0)
        if self._pending:
            log.warning("journal_closed_with_pending", entries=len(self._pending),
                        directory=str(self.directory))
        self._own = None
        self._adopted = []
        self._opened = False

    def _segments(self) -> Iterator[Segment]:
        if self._own is not None:
            yield self._own
        yield from self._adopted

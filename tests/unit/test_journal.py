"""The journal file: durable appends, done markers, adoption of exited processes' segments."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gatekeeper import journal as journal_module
from gatekeeper.journal import Entry, Journal, JournalError, Segment, read_pending


def charge(charge_id: str = "c1", cost: int = 3, **fields: object) -> Entry:
    return Entry(op="charge", charge_id=charge_id, tenant="acme", route="echo", cost=cost,
                 pools=("acme/ml", "acme"), **fields)  # type: ignore[arg-type]


def segments(directory: Path) -> list[Path]:
    return sorted(directory.glob("journal-*.jsonl"))


async def test_write_reaches_file(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    journal.open()
    await journal.write(charge())
    files = segments(tmp_path)
    lines = [json.loads(line) for line in files[0].read_text().splitlines()]
    assert len(files) == 1
    assert lines == [{"seq": 1, "op": "charge", "id": "c1", "tenant": "acme", "route": "echo",
                      "cost": 3, "pools": ["acme/ml", "acme"], "critical": False,
                      "shadow": False}]


async def test_no_file_without_entries(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    journal.open()
    await journal.close()
    assert segments(tmp_path) == []


async def test_done_entry_not_pending(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    journal.open()
    first, second = charge("c1"), charge("c2")
    await journal.write(first)
    await journal.write(second)
    journal.mark_done([first])
    await journal.flush()
    pending, highest = read_pending(segments(tmp_path)[0])
    assert [entry.charge_id for entry in pending] == ["c2"]
    assert highest == 2
    assert journal.pending_count == 1


async def test_close_keeps_pending_segment(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    journal.open()
    await journal.write(charge())
    await journal.close()
    assert len(segments(tmp_path)) == 1


async def test_close_deletes_replayed_segment(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    journal.open()
    entry = charge()
    await journal.write(entry)
    journal.mark_done([entry])
    await journal.close()
    assert segments(tmp_path) == []


async def test_exited_segment_adopted(tmp_path: Path) -> None:
    before = Journal(tmp_path)
    before.open()
    await before.write(charge("c1"))
    await before.write(Entry(op="refund", charge_id="c0", tenant="acme", route="echo", cost=2))
    await before.close()
    after = Journal(tmp_path)
    adopted = after.open()
    assert [(entry.op, entry.charge_id) for entry in adopted] == [("charge", "c1"),
                                                                 ("refund", "c0")]
    assert after.pending_count == 2


async def test_adopted_segment_deleted_when_done(tmp_path: Path) -> None:
    before = Journal(tmp_path)
    before.open()
    await before.write(charge())
    await before.close()
    after = Journal(tmp_path)
    adopted = after.open()
    after.mark_done(adopted)
    await after.flush()
    assert segments(tmp_path) == []


async def test_live_segment_not_adopted(tmp_path: Path) -> None:
    running = Journal(tmp_path)
    running.open()
    await running.write(charge())
    other = Journal(tmp_path)
    adopted = other.open()
    await running.close()
    assert adopted == []


async def test_adopted_entries_continue_seq(tmp_path: Path) -> None:
    before = Journal(tmp_path)
    before.open()
    await before.write(charge("c1"))
    await before.write(charge("c2"))
    await before.close()
    after = Journal(tmp_path)
    adopted = after.open()
    after.mark_done(adopted[:1])
    await after.flush()
    pending, _highest = read_pending(segments(tmp_path)[0])
    assert [entry.charge_id for entry in pending] == ["c2"]


def test_torn_line_skipped(tmp_path: Path) -> None:
    path = tmp_path / "journal-1-1.jsonl"
    good = json.dumps({"seq": 1, "op": "refund", "id": "c1", "tenant": "acme", "route": "r",
                       "cost": 1})
    path.write_text(good + "\n" + '{"seq": 2, "op": "cha')
    pending, highest = read_pending(path)
    assert [entry.charge_id for entry in pending] == ["c1"]
    assert highest == 1


async def test_not_before_delays_entry(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    journal.open()
    await journal.write(charge("now"))
    await journal.write(Entry(op="refund", charge_id="later", tenant="acme", route="echo",
                              cost=1, not_before=5_000))
    ready_early = [entry.charge_id for entry in journal.ready(now=4_999)]
    ready_late = [entry.charge_id for entry in journal.ready(now=5_000)]
    assert ready_early == ["now"]
    assert ready_late == ["now", "later"]
    assert journal.next_ready_at() == 0


async def test_failed_write_drops_entry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def full_disk(self: Segment, data: bytes) -> None:
        raise OSError(28, "No space left on device")

    journal = Journal(tmp_path)
    journal.open()
    monkeypatch.setattr(Segment, "append", full_disk)
    with pytest.raises(JournalError):
        await journal.write(charge())
    assert journal.pending_count == 0


async def test_write_before_open_fails(tmp_path: Path) -> None:
    with pytest.raises(JournalError):
        await Journal(tmp_path).write(charge())


async def test_replayed_segment_rotates(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(journal_module, "ROTATE_BYTES", 10)
    journal = Journal(tmp_path)
    journal.open()
    first = charge("c1")
    await journal.write(first)
    journal.mark_done([first])
    await journal.flush()
    after_rotation = segments(tmp_path)
    await journal.write(charge("c2"))
    assert after_rotation == []
    assert len(segments(tmp_path)) == 1

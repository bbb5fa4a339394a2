"""Round-trip and validation tests of the WAL (kvstore.storage.wal)."""

from __future__ import annotations

import errno
import itertools
import os
import random
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvstore.raft.types import EMPTY_HARD_STATE, Entry, EntryType, HardState, SnapshotMetadata
from kvstore.storage import wal as wal_mod
from kvstore.storage.errors import (
    DiskFaultError,
    DiskFullError,
    WALClosedError,
    WALCorruptError,
    WALExistsError,
    WALFailedError,
    WALLockedError,
    WALMissingEntriesError,
    WALNotFoundError,
    WALSnapshotNotFoundError,
)
from kvstore.storage.wal import (
    WAL,
    Recovered,
    SegmentHeader,
    iter_segment_records,
    list_segments,
    read_wal,
    segment_name,
    valid_snapshot_markers,
)

SEG = 4096  # small segments so tests roll over often


def ents(first: int, last: int, term: int = 1, size: int = 40) -> list[Entry]:
    return [
        Entry(term, i, EntryType.NORMAL, (f"{i}/{term}|".encode() * size)[:size])
        for i in range(first, last + 1)
    ]


def test_create_open_roundtrip(tmp_path: Path) -> None:
    d = tmp_path / "wal"
    with WAL.create(d, b"node-1/cluster-9", segment_size=SEG) as w:
        w.save(HardState(1, 1, 0), ents(1, 5))
        w.save(HardState(1, 1, 5), [Entry(1, 6, EntryType.CONF_CHANGE, b"\x00\x01cc")])
        w.save(None, [Entry(2, 7, data=b"")])
    wal, rec = WAL.open(d, segment_size=SEG)
    wal.close()
    assert rec.metadata == b"node-1/cluster-9"
    assert rec.hard_state == HardState(1, 1, 5)
    assert rec.entries == [
        *ents(1, 5),
        Entry(1, 6, EntryType.CONF_CHANGE, b"\x00\x01cc"),
        Entry(2, 7),
    ]
    assert rec.torn_bytes == 0
    assert [n for _, _, n in list_segments(d)] == [str(d / segment_name(0, 1))]


def test_empty_wal(tmp_path: Path) -> None:
    WAL.create(tmp_path, b"m").close()
    wal, rec = WAL.open(tmp_path)
    wal.close()
    assert (rec.metadata, rec.hard_state, rec.entries) == (b"m", EMPTY_HARD_STATE, [])


def test_create_refuses_existing_and_open_refuses_missing(tmp_path: Path) -> None:
    with pytest.raises(WALNotFoundError):
        WAL.open(tmp_path)
    WAL.create(tmp_path, segment_size=SEG).close()
    with pytest.raises(WALExistsError):
        WAL.create(tmp_path, segment_size=SEG)
    assert WAL.exists(tmp_path)


def test_lock_excludes_second_opener(tmp_path: Path) -> None:
    w = WAL.create(tmp_path, segment_size=SEG)
    with pytest.raises(WALLockedError):
        WAL.open(tmp_path, segment_size=SEG)
    w.close()
    w2, _ = WAL.open(tmp_path, segment_size=SEG)
    w2.close()
    with pytest.raises(WALClosedError):
        w2.save(None, ents(1, 1))


def test_overwrite_suffix_later_records_win(tmp_path: Path) -> None:
    with WAL.create(tmp_path, segment_size=SEG) as w:
        w.save(HardState(1, 1, 3), ents(1, 10, term=1))
        w.save(HardState(2, 2, 3), ents(6, 8, term=2))  # leader change: replace 6..10
        assert w.last_index == 8
        w.save(None, ents(9, 9, term=2))
        w.save(HardState(3, 3, 4), ents(4, 4, term=3))  # replace 4.. again
    _, rec = _open_close(tmp_path)
    assert rec.entries == [*ents(1, 3, 1), *ents(4, 4, 3)]
    assert rec.hard_state == HardState(3, 3, 4)


def test_save_rejects_gaps_and_non_contiguous(tmp_path: Path) -> None:
    with WAL.create(tmp_path, segment_size=SEG) as w:
        w.save(None, ents(1, 3))
        with pytest.raises(ValueError, match="gap"):
            w.save(None, ents(5, 6))
        with pytest.raises(ValueError, match="contiguous"):
            w.save(None, [*ents(4, 4), *ents(6, 6)])
        assert w.last_index == 3
        w.save(None, ents(4, 4))
    assert [e.index for e in _open_close(tmp_path)[1].entries] == [1, 2, 3, 4]


def test_rollover_across_segments_and_reopen_append(tmp_path: Path) -> None:
    expected: list[Entry] = []
    with WAL.create(tmp_path, b"x", segment_size=SEG) as w:
        for i in range(1, 400, 7):
            batch = ents(i, i + 6)
            w.save(HardState(1, 1, i), batch)
            expected += batch
    segs = list_segments(tmp_path)
    assert len(segs) > 5
    assert [s for s, _, _ in segs] == list(range(len(segs)))
    for _, _, path in segs[:-1]:  # completed segments are trimmed to their data
        end = list(iter_segment_records(path))[-1][1]
        assert os.path.getsize(path) == (end + 7) // 8 * 8 >= SEG
    w, rec = WAL.open(tmp_path, segment_size=SEG)
    assert rec.entries == expected
    w.save(HardState(2, 1, 410), ents(395, 420, term=2))
    w.close()
    _, rec = _open_close(tmp_path)
    assert rec.entries == expected[:394] + ents(395, 420, term=2)
    assert rec.hard_state == HardState(2, 1, 410)
    # a segment's first_index is the next index at the time it was cut
    for (_, first, path), (_, _, nxt) in itertools.pairwise(segs):
        last_in = [r.index for _, _, r in iter_segment_records(path) if isinstance(r, Entry)]
        assert last_in[-1] + 1 == int(os.path.basename(nxt).split("-")[1][:16], 16)
        assert first <= last_in[0]


def test_hard_state_survives_release(tmp_path: Path) -> None:
    with WAL.create(tmp_path, segment_size=SEG) as w:
        w.save(HardState(7, 3, 0), ents(1, 1))
        for i in range(2, 300, 10):
            w.save(None, ents(i, i + 9, term=7))  # no new hard state: only the first has it
        w.save_snapshot(SnapshotMetadata(index=250, term=7))
        assert w.release_to(250) > 0
    w, rec = WAL.open(tmp_path, SnapshotMetadata(index=250, term=7), segment_size=SEG)
    w.close()
    assert rec.hard_state == HardState(7, 3, 0)
    assert [e.index for e in rec.entries] == list(range(251, 302))


def test_snapshot_markers_and_release(tmp_path: Path) -> None:
    with WAL.create(tmp_path, b"m", segment_size=SEG) as w:
        for i in range(1, 300, 10):
            w.save(HardState(1, 1, i + 9), ents(i, i + 9))
        w.save_snapshot(SnapshotMetadata(index=100, term=1))
        w.save(HardState(1, 1, 330), ents(301, 330))
        w.save_snapshot(SnapshotMetadata(index=200, term=1))
        n_before = len(list_segments(tmp_path))
        removed = w.release_to(200)
        assert removed > 0
        assert len(list_segments(tmp_path)) == n_before - removed
        first_kept = list_segments(tmp_path)[0][1]
        assert first_kept <= 200
        w.save(None, ents(331, 335))
    # reading from the released part is impossible; from a kept snapshot it works
    with pytest.raises(WALMissingEntriesError):
        read_wal(tmp_path)
    with pytest.raises(WALSnapshotNotFoundError):
        read_wal(tmp_path, SnapshotMetadata(index=200, term=2))
    rec = read_wal(tmp_path, SnapshotMetadata(index=200, term=1))
    assert [e.index for e in rec.entries] == list(range(201, 336))
    assert rec.metadata == b"m"
    assert valid_snapshot_markers(tmp_path)[-1].index == 200
    assert valid_snapshot_markers(tmp_path)[0].index == 0


def test_release_never_removes_current_segment(tmp_path: Path) -> None:
    with WAL.create(tmp_path, segment_size=SEG) as w:
        w.save(HardState(1, 1, 1000), ents(1, 200))
        w.save_snapshot(SnapshotMetadata(index=200, term=1))
        w.release_to(10**9)
        w.save(None, ents(201, 202))
    assert len(list_segments(tmp_path)) == 1
    assert [e.index for e in read_wal(tmp_path, SnapshotMetadata(200, 1)).entries] == [201, 202]


def test_installed_snapshot_restarts_log(tmp_path: Path) -> None:
    """A marker beyond the last index (snapshot from the leader) lets the log jump."""
    with WAL.create(tmp_path, segment_size=SEG) as w:
        w.save(HardState(1, 0, 2), ents(1, 3))
        w.save_snapshot(SnapshotMetadata(index=1000, term=4))
        assert w.last_index == 1000
        w.save(HardState(4, 0, 1000), ents(1001, 1002, term=4))
    rec = read_wal(tmp_path, SnapshotMetadata(index=1000, term=4))
    assert [e.index for e in rec.entries] == [1001, 1002]
    with pytest.raises(WALMissingEntriesError):
        read_wal(tmp_path)  # the old snapshot cannot be continued by this WAL


def test_missing_middle_segment_is_corruption(tmp_path: Path) -> None:
    with WAL.create(tmp_path, segment_size=SEG) as w:
        for i in range(1, 200, 10):
            w.save(None, ents(i, i + 9))
    segs = list_segments(tmp_path)
    os.unlink(segs[2][2])
    with pytest.raises(WALCorruptError) as ei:
        read_wal(tmp_path)
    assert ei.value.path == segs[3][2]


def test_lost_tail_of_middle_segment_is_corruption(tmp_path: Path) -> None:
    with WAL.create(tmp_path, segment_size=SEG) as w:
        for i in range(1, 200, 10):
            w.save(None, ents(i, i + 9))
    segs = list_segments(tmp_path)
    path = segs[1][2]
    recs = list(iter_segment_records(path))
    os.truncate(path, recs[-1][0])  # drop the last whole record of a non-final segment
    with pytest.raises(WALCorruptError) as ei:
        read_wal(tmp_path)
    assert ei.value.path == segs[2][2]
    assert ei.value.offset == 0


def test_index_gap_is_corruption(tmp_path: Path) -> None:
    """A segment whose entries skip an index (here: a record removed) is corruption."""
    with WAL.create(tmp_path, segment_size=SEG) as w:
        w.save(None, ents(1, 10))
    path = list_segments(tmp_path)[0][2]
    recs = list(iter_segment_records(path))
    data = Path(path).read_bytes()
    # cut out record #4 (entry index 4) keeping alignment: later records stay valid
    start, nxt = recs[4][0], recs[5][0]
    assert isinstance(recs[4][2], Entry) and recs[4][2].index == 4
    Path(path).write_bytes(data[:start] + data[nxt:])
    with pytest.raises(WALCorruptError) as ei:
        read_wal(tmp_path)
    assert ei.value.offset == start
    assert "skips" in ei.value.reason


def test_segment_records_layout(tmp_path: Path) -> None:
    with WAL.create(tmp_path, b"meta", segment_size=SEG) as w:
        w.save(HardState(1, 2, 3), ents(1, 2))
        w.save_snapshot(SnapshotMetadata(index=2, term=1))
    recs = list(iter_segment_records(list_segments(tmp_path)[0][2]))
    assert isinstance(recs[0][2], SegmentHeader) and recs[0][0] == 0
    assert recs[0][2].metadata == b"meta"
    assert all(off % 8 == 0 for off, _, _ in recs)
    kinds = [type(r).__name__ for _, _, r in recs]
    assert kinds == ["SegmentHeader", "Entry", "Entry", "HardState", "SnapshotMarker"]


def _open_close(d: Path) -> tuple[WAL, Recovered]:
    w, rec = WAL.open(d, segment_size=SEG)
    w.close()
    return w, rec


class _Model:
    """Reference semantics of the log: a plain list, suffix replaced on overwrite."""

    def __init__(self) -> None:
        self.log: list[Entry] = []
        self.hs = EMPTY_HARD_STATE

    def save(self, hs: HardState | None, batch: list[Entry]) -> None:
        if batch:
            del self.log[batch[0].index - 1 :]
            self.log.extend(batch)
        if hs is not None:
            self.hs = hs


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    ops=st.lists(
        st.tuples(
            st.sampled_from(["append", "overwrite", "hs", "cut", "reopen", "nosync"]),
            st.integers(min_value=0, max_value=30),
            st.integers(min_value=0, max_value=300),
        ),
        max_size=40,
    )
)
def test_random_operations_match_model(
    tmp_path_factory: pytest.TempPathFactory, ops: list[tuple[str, int, int]]
) -> None:
    d = tmp_path_factory.mktemp("walprop")
    model = _Model()
    term = 1
    w = WAL.create(d, b"p", segment_size=1024)
    try:
        for op, n, size in ops:
            last = len(model.log)
            if op in ("append", "nosync"):
                batch = [
                    Entry(term, i, data=os.urandom(size)) for i in range(last + 1, last + 1 + n)
                ]
                w.save(None, batch, sync=op == "append")
                model.save(None, batch)
            elif op == "overwrite":
                term += 1
                first = max(1, last + 1 - n)
                batch = [
                    Entry(term, i, data=bytes([term % 256]) * size)
                    for i in range(first, first + n // 2 + 1)
                ]
                hs = HardState(term, term % 3, min(first - 1, model.hs.commit))
                w.save(hs, batch)
                model.save(hs, batch)
            elif op == "hs":
                hs = HardState(term, n, min(last, size))
                w.save(hs, [])
                model.save(hs, [])
            elif op == "cut":
                w.cut()
            else:
                w.close()
                w, rec = WAL.open(d, segment_size=1024)
                assert rec.entries == model.log
                assert rec.hard_state == model.hs
            assert w.last_index == len(model.log)
    finally:
        w.close()
    rec = read_wal(d)
    assert rec.entries == model.log
    assert rec.hard_state == model.hs
    assert rec.metadata == b"p"


def test_many_records_replay(tmp_path: Path) -> None:
    """Mixed sizes including large entries spanning many pages."""
    rng = random.Random(7)
    model = _Model()
    with WAL.create(tmp_path, segment_size=64 * 1024) as w:
        for _ in range(60):
            last = len(model.log)
            batch = [
                Entry(1, i, data=rng.randbytes(rng.choice([0, 1, 7, 8, 9, 100, 5000, 70000])))
                for i in range(last + 1, last + 1 + rng.randint(1, 5))
            ]
            w.save(HardState(1, 1, last), batch)
            model.save(HardState(1, 1, last), batch)
    rec = read_wal(tmp_path)
    assert rec.entries == model.log
    assert rec.hard_state == model.hs


def test_fsync_failure_poisons_the_wal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """After a failed fdatasync the WAL refuses further use (no retrying fsync)."""
    w = WAL.create(tmp_path, segment_size=SEG)
    w.save(HardState(1, 1, 0), ents(1, 3))

    def failing(fd: int) -> None:
        raise OSError(errno.EIO, "injected I/O error")

    monkeypatch.setattr(wal_mod, "_fdatasync", failing)
    with pytest.raises(DiskFaultError, match=r"fdatasync of the WAL .* failed") as ei:
        w.save(None, ents(4, 4))
    assert ei.value.errno == errno.EIO
    assert not isinstance(ei.value, DiskFullError)
    monkeypatch.undo()
    with pytest.raises(WALFailedError):
        w.save(None, ents(5, 5))
    with pytest.raises(WALFailedError):
        w.sync()
    w.close()  # releases the lock without syncing
    _, rec = _open_close(tmp_path)
    assert [e.index for e in rec.entries][:3] == [1, 2, 3]


def test_full_disk_on_write_stops_the_wal_and_keeps_what_was_synced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ENOSPC in the middle of a batch: a DiskFullError, no retry, the synced prefix intact."""
    w = WAL.create(tmp_path, segment_size=SEG)
    w.save(HardState(1, 1, 0), ents(1, 3))
    real_pwrite = os.pwrite
    calls: list[int] = []

    def half_then_full(fd: int, data: bytes, offset: int) -> int:
        calls.append(offset)
        if len(calls) == 1:
            return real_pwrite(fd, memoryview(data)[:16], offset)  # torn, then the disk is full
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "pwrite", half_then_full)
    with pytest.raises(DiskFullError, match="no space left on device: writing the WAL"):
        w.save(None, ents(4, 6, size=200))
    monkeypatch.undo()
    with pytest.raises(WALFailedError):
        w.save(None, ents(4, 4))
    w.close()
    _, rec = _open_close(tmp_path)  # the torn tail is cut; entries 1..3 are all there
    assert [e.index for e in rec.entries] == [1, 2, 3]


def test_leftover_temp_segment_from_crashed_cut_is_removed(tmp_path: Path) -> None:
    with WAL.create(tmp_path, segment_size=SEG) as w:
        w.save(None, ents(1, 5))
    tmp = tmp_path / (segment_name(1, 6) + ".tmp")
    tmp.write_bytes(b"\x00" * 100)  # crash between creating and renaming the next segment
    w, rec = WAL.open(tmp_path, segment_size=SEG)
    assert not tmp.exists()
    assert [e.index for e in rec.entries] == [1, 2, 3, 4, 5]
    w.cut()  # and the same name can be created now
    w.save(None, ents(6, 6))
    w.close()
    assert [s for s, _, _ in list_segments(tmp_path)] == [0, 1]
    assert [e.index for e in read_wal(tmp_path).entries] == [1, 2, 3, 4, 5, 6]


@pytest.mark.parametrize("content", [b"", bytes(4096)])
def test_empty_or_zeroed_final_segment_is_corruption(tmp_path: Path, content: bytes) -> None:
    """Segments appear only complete (temp file + rename), so a blank one is damage."""
    with WAL.create(tmp_path, segment_size=SEG) as w:
        w.save(None, ents(1, 3))
        w.cut()
    path = list_segments(tmp_path)[-1][2]
    Path(path).write_bytes(content)
    with pytest.raises(WALCorruptError) as ei:
        WAL.open(tmp_path, segment_size=SEG)
    assert (ei.value.path, ei.value.offset) == (path, 0)


def test_crash_midway_through_release(tmp_path: Path) -> None:
    """release_to deletes oldest first, so a crash leaves a readable suffix."""
    with WAL.create(tmp_path, segment_size=SEG) as w:
        for i in range(1, 300, 10):
            w.save(HardState(1, 1, i + 9), ents(i, i + 9))
        w.save_snapshot(SnapshotMetadata(index=250, term=1))
    segs = list_segments(tmp_path)
    doomed = [s for s in segs if s[1] <= 250][:-1]
    assert len(doomed) >= 3
    for _, _, path in doomed[:2]:  # "crash" after the first two unlinks
        os.unlink(path)
    w, rec = WAL.open(tmp_path, SnapshotMetadata(index=250, term=1), segment_size=SEG)
    assert [e.index for e in rec.entries] == list(range(251, 301))
    assert w.release_to(250) == len(doomed) - 2
    w.close()
    assert list_segments(tmp_path)[0][1] <= 250


def test_released_segments_leave_the_directory_whole_then_shrink_step_by_step(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each released segment is unlinked before any of its blocks is freed (a crash never
    leaves a short segment to replay), then freed RELEASE_STEP_BYTES at a time."""
    step = 1024
    monkeypatch.setattr(wal_mod, "RELEASE_STEP_BYTES", step)
    with WAL.create(tmp_path, segment_size=SEG) as w:
        for i in range(1, 300, 10):
            w.save(HardState(1, 1, i + 9), ents(i, i + 9))
        w.save_snapshot(SnapshotMetadata(index=250, term=1))
        sizes = {path: os.path.getsize(path) for _, _, path in list_segments(tmp_path)}
        doomed = [s for s in list_segments(tmp_path) if s[1] <= 250][:-1]
        assert len(doomed) >= 3
        shrinks: list[tuple[int, int]] = []
        real_ftruncate = os.ftruncate

        def recording_ftruncate(fd: int, length: int) -> None:
            for _, _, path in list_segments(tmp_path):  # what a crash now would leave
                assert os.path.getsize(path) == sizes[path], path
            shrinks.append((os.fstat(fd).st_size, length))
            real_ftruncate(fd, length)

        monkeypatch.setattr(os, "ftruncate", recording_ftruncate)
        assert w.release_to(250) == len(doomed)
        monkeypatch.setattr(os, "ftruncate", real_ftruncate)
    assert shrinks, "the released segments were freed in steps"
    assert all(0 < before - after <= step for before, after in shrinks)
    assert sum(before - after for before, after in shrinks) == sum(
        sizes[path] for _, _, path in doomed
    )
    assert [s[2] for s in list_segments(tmp_path)] == [
        p for p in sizes if p not in {d[2] for d in doomed}
    ]

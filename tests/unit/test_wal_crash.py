"""Crash-safety tests of the WAL: torn tails, bit flips, and kill -9 of a real writer."""

from __future__ import annotations

import logging
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from kvstore.raft.types import EMPTY_HARD_STATE, Entry, HardState, SnapshotMetadata
from kvstore.storage.errors import WALCorruptError
from kvstore.storage.wal import (
    WAL,
    Record,
    SegmentHeader,
    SnapshotMarker,
    iter_segment_records,
    list_segments,
    read_wal,
    valid_snapshot_markers,
)
from tests.unit.wal_writer_proc import payload

SEG = 4096
ROOT = Path(__file__).resolve().parents[2]
WRITER = Path(__file__).with_name("wal_writer_proc.py")


def _expected(records: list[Record]) -> tuple[list[Entry], HardState]:
    """Replay decoded records with the reference semantics (no snapshot)."""
    log: list[Entry] = []
    hs = EMPTY_HARD_STATE
    for r in records:
        if isinstance(r, Entry):
            del log[r.index - 1 :]
            log.append(r)
        elif isinstance(r, HardState):
            hs = r
        elif isinstance(r, SegmentHeader):
            hs = r.hard_state
    return log, hs


def _write_sample(d: Path, rng: random.Random, batches: int = 40) -> None:
    """A WAL spanning several segments with entries, hard states and overwrites."""
    with WAL.create(d, b"crash", segment_size=SEG) as w:
        term = 1
        for b in range(batches):
            last = w.last_index
            first = last + 1 if b % 9 else max(1, last - 2)  # sometimes overwrite a suffix
            if b % 9 == 0:
                term += 1
            n = rng.randint(1, 6)
            batch = [
                Entry(term, i, data=rng.randbytes(rng.randint(0, 150)))
                for i in range(first, first + n)
            ]
            hs = HardState(term, 1, max(0, first - 1)) if rng.random() < 0.7 else None
            w.save(hs, batch)


def _all_records(d: Path) -> list[tuple[str, int, int, Record]]:
    out = []
    for _, _, path in list_segments(d):
        out += [(path, off, end, rec) for off, end, rec in iter_segment_records(path)]
    return out


def _padded(end: int) -> int:
    return (end + 7) // 8 * 8


def test_truncate_at_every_offset_of_last_records(tmp_path: Path) -> None:
    d = tmp_path / "wal"
    _write_sample(d, random.Random(1))
    recs = _all_records(d)
    last_path = list_segments(d)[-1][2]
    in_last = [r for r in recs if r[0] == last_path]
    assert len(in_last) >= 6, "sample must leave several records in the final segment"
    original = Path(last_path).read_bytes()
    tail = in_last[-5:]
    lo, hi = tail[0][1], _padded(tail[-1][2])
    checked = 0
    for cut in range(lo, hi + 1):
        with open(last_path, "wb") as f:
            f.write(original[:cut])
        survivors = [r for (p, _, end, r) in recs if p != last_path or end <= cut]
        exp_log, exp_hs = _expected(survivors)
        w, rec = WAL.open(d, segment_size=SEG)
        try:
            assert rec.entries == exp_log, cut
            assert rec.hard_state == exp_hs, cut
            assert rec.metadata == b"crash"
            if cut % 5 == 0 or any(cut == end for (_, _, end, _) in tail):
                # appendable: the next entry lands right after the surviving prefix
                nxt = Entry(99, w.last_index + 1, data=b"after-crash")
                w.save(HardState(99, 1, 0), [nxt])
                w.close()
                again = read_wal(d)
                assert again.entries == [*exp_log, nxt], cut
                assert again.hard_state == HardState(99, 1, 0)
                assert again.torn_bytes == 0
        finally:
            w.close()
        checked += 1
    assert checked == hi - lo + 1 > 300


def test_zero_filled_tail_is_end_of_log(tmp_path: Path) -> None:
    """Garbage-free torn write: the body of the last record reads as zeros."""
    d = tmp_path / "wal"
    _write_sample(d, random.Random(2))
    recs = _all_records(d)
    path, off, end, _ = recs[-1]
    with open(path, "r+b") as f:
        f.seek(off + 8)
        f.write(bytes(end - off - 8))  # header written, body lost
    w, rec = WAL.open(d, segment_size=SEG)
    w.close()
    assert (rec.entries, rec.hard_state) == _expected([r for *_, r in recs[:-1]])


@pytest.mark.parametrize("seed", range(4))
def test_random_byte_flips(tmp_path: Path, seed: int, caplog: pytest.LogCaptureFixture) -> None:
    """A flip in the final record truncates it; a flip anywhere earlier is corruption."""
    rng = random.Random(seed)
    d = tmp_path / "wal"
    _write_sample(d, rng)
    recs = _all_records(d)
    originals = {p: Path(p).read_bytes() for _, _, p in list_segments(d)}
    outcomes = {"torn": 0, "corrupt": 0}
    for trial in range(60):
        # bias towards the last records, where the interesting boundary is
        k = len(recs) - 1 - min(len(recs) - 1, int(rng.expovariate(0.15)))
        path, off, end, _ = recs[k]
        pos = rng.randrange(off, _padded(end))
        data = bytearray(originals[path])
        data[pos] ^= rng.randrange(1, 256)
        Path(path).write_bytes(bytes(data))
        try:
            if k == len(recs) - 1:
                with caplog.at_level(logging.WARNING, logger="kvstore.storage.wal"):
                    w, rec = WAL.open(d, segment_size=SEG)
                w.close()
                assert (rec.entries, rec.hard_state) == _expected([r for *_, r in recs[:-1]])
                assert "truncating damaged tail" in caplog.text
                outcomes["torn"] += 1
            else:
                with pytest.raises(WALCorruptError) as ei:
                    WAL.open(d, segment_size=SEG)
                assert ei.value.path == path, (trial, k, pos)
                assert ei.value.offset == off, (trial, k, pos)
                assert path in str(ei.value) and str(off) in str(ei.value)
                outcomes["corrupt"] += 1
        finally:
            for p, content in originals.items():
                Path(p).write_bytes(content)
    assert outcomes["torn"] > 0 and outcomes["corrupt"] > 0


def test_valid_record_after_zero_gap_is_corruption(tmp_path: Path) -> None:
    """Zeroing a whole record in the middle must not silently hide the later ones."""
    d = tmp_path / "wal"
    _write_sample(d, random.Random(3))
    recs = _all_records(d)
    last_path = recs[-1][0]
    path, off, end, _ = [r for r in recs if r[0] == last_path][-3]
    with open(path, "r+b") as f:
        f.seek(off)
        f.write(bytes(_padded(end) - off))
    with pytest.raises(WALCorruptError) as ei:
        WAL.open(d, segment_size=SEG)
    assert (ei.value.path, ei.value.offset) == (path, off)


# --------------------------------------------------------------------------- kill -9


def _spawn(d: Path, seed: int, term: int) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen(
        [sys.executable, str(WRITER), str(d), str(seed), str(term), str(SEG)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _read_line(proc: subprocess.Popen[str]) -> str:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        proc.wait()
        err = proc.stderr.read() if proc.stderr else ""
        pytest.fail(f"writer exited early (rc={proc.returncode}): {err}")
    return line.strip()


def _check_log(d: Path, term: int, reported: list[int]) -> int:
    """Reopen after a kill; every reported index must be there. Returns last index."""
    marker = valid_snapshot_markers(d)[-1]
    assert isinstance(marker, SnapshotMarker)
    w, rec = WAL.open(d, SnapshotMetadata(index=marker.index, term=marker.term), segment_size=SEG)
    w.close()
    idx = [e.index for e in rec.entries]
    assert idx == list(range(marker.index + 1, marker.index + 1 + len(idx)))
    by_index = {e.index: e for e in rec.entries}
    prev_term = 0
    for e in rec.entries:
        assert e.data == payload(e.index, e.term)
        assert prev_term <= e.term <= term
        prev_term = e.term
    for i in reported:
        if i > marker.index:
            assert i in by_index, f"synced index {i} lost (term {term})"
            assert by_index[i].term == term
    assert rec.hard_state.term in (term, term - 1, 0)
    return w.last_index


def test_kill9_writer_loses_no_synced_entry(tmp_path: Path) -> None:
    rounds = int(os.environ.get("WAL_KILL_ROUNDS", "30"))
    rng = random.Random(20241125)
    d = tmp_path / "wal"
    last = 0
    for r in range(rounds):
        term = r + 1
        proc = _spawn(d, rng.randrange(1 << 30), term)
        try:
            ready = _read_line(proc)
            assert ready.startswith("READY ")
            assert int(ready.split()[1]) >= last  # nothing synced vanished since our check
            reported = [int(_read_line(proc)) for _ in range(rng.randint(1, 60))]
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            if proc.stdout:
                proc.stdout.close()
            if proc.stderr:
                proc.stderr.close()
        assert proc.returncode == -signal.SIGKILL
        assert reported == sorted(reported)
        last = _check_log(d, term, reported)
        assert last >= reported[-1]
    assert len(list_segments(d)) >= 1


@pytest.mark.slow
def test_kill9_soak(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Longer kill -9 run (``make soak`` / ``-m slow``)."""
    monkeypatch.setenv("WAL_KILL_ROUNDS", "300")
    test_kill9_writer_loses_no_synced_entry(tmp_path)

"""Tests of snapshot files (kvstore.storage.snap)."""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvstore.raft.types import ConfState, Entry, HardState, Snapshot, SnapshotMetadata
from kvstore.storage.errors import SnapshotCorruptError
from kvstore.storage.snap import SnapshotStore, decode_metadata, encode_metadata, snapshot_name
from kvstore.storage.wal import WAL, valid_snapshot_markers

CS = ConfState(
    voters=(1, 2, 3), learners=(9,), voters_outgoing=(1, 2), learners_next=(4,), auto_leave=True
)


def meta(index: int, term: int = 1, cs: ConfState = CS) -> SnapshotMetadata:
    return SnapshotMetadata(index=index, term=term, conf_state=cs)


def test_metadata_codec_roundtrip() -> None:
    for cs in (ConfState(), CS, ConfState(voters=tuple(range(1, 200)))):
        m = meta(2**63 + 5, 2**40, cs)
        assert decode_metadata(encode_metadata(m)) == m
    with pytest.raises(ValueError):
        decode_metadata(encode_metadata(meta(5))[:-1])


def test_save_load_roundtrip(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path)
    data = random.Random(1).randbytes(3 * 1024 * 1024 + 17)  # several read chunks
    path = store.save(Snapshot(meta(42, 3), data))
    assert os.path.basename(path) == snapshot_name(3, 42)
    assert os.listdir(tmp_path) == [snapshot_name(3, 42)]  # no temp file left behind
    snap = store.load(path)
    assert snap.metadata == meta(42, 3)
    assert snap.data == data
    assert b"".join(store.iter_data(path, chunk_size=1000)) == data
    assert store.verify(path) == meta(42, 3)


def test_streaming_save(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path / "snap")
    chunks = [bytes([i]) * (i * 1000) for i in range(50)]
    p1 = store.save_chunks(meta(10), iter(chunks))
    src = tmp_path / "state.bin"
    src.write_bytes(b"".join(chunks))
    p2 = store.save_from_file(meta(11), src, chunk_size=4096)
    assert store.load(p1).data == store.load(p2).data == b"".join(chunks)


def test_keep_newest_n(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path, keep=3)
    for i in range(1, 8):
        store.save(Snapshot(meta(i * 10, term=1 + i // 3), f"state {i}".encode()))
    assert [s.index for s in store.list()] == [50, 60, 70]
    newest = store.load_newest()
    assert newest is not None and newest.data == b"state 7"


def test_corrupt_newest_falls_back(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = SnapshotStore(tmp_path)
    for i in range(1, 4):
        store.save(Snapshot(meta(i * 100), b"payload %d " % i * 1000))
    newest_path = store.list()[-1].path
    raw = bytearray(Path(newest_path).read_bytes())
    raw[len(raw) // 2] ^= 0x40
    Path(newest_path).write_bytes(bytes(raw))
    with pytest.raises(SnapshotCorruptError):
        store.load(newest_path)
    with caplog.at_level(logging.WARNING, logger="kvstore.storage.snap"):
        snap = store.load_newest()
    assert snap is not None and snap.metadata.index == 200
    assert snap.data == b"payload 2 " * 1000
    assert "corrupt" in caplog.text and newest_path in caplog.text
    assert os.path.exists(newest_path + ".broken")
    assert [s.index for s in store.list()] == [100, 200]


@pytest.mark.parametrize("damage", ["truncate", "flip_header", "flip_trailer", "empty", "append"])
def test_every_kind_of_damage_is_detected(tmp_path: Path, damage: str) -> None:
    store = SnapshotStore(tmp_path)
    store.save(Snapshot(meta(1), b"old"))
    path = store.save(Snapshot(meta(2), b"x" * 5000))
    raw = bytearray(Path(path).read_bytes())
    if damage == "truncate":
        raw = raw[:-100]
    elif damage == "flip_header":
        raw[3] ^= 1
    elif damage == "flip_trailer":
        raw[-1] ^= 1
    elif damage == "empty":
        raw = bytearray()
    else:
        raw += b"\x00"
    Path(path).write_bytes(bytes(raw))
    with pytest.raises(SnapshotCorruptError):
        store.verify(path)
    snap = store.load_newest()
    assert snap is not None and snap.data == b"old"


def test_no_snapshot(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path)
    assert store.load_newest() is None
    store.save(Snapshot(meta(1), b"a"))
    Path(store.list()[0].path).write_bytes(b"junk")
    assert store.load_newest() is None


def test_leftover_tmp_removed_and_ignored(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path)
    store.save(Snapshot(meta(5), b"good"))
    # simulate a crash during a later save: only the temp file exists
    (tmp_path / (snapshot_name(1, 9) + ".tmp")).write_bytes(b"partial")
    snap = store.load_newest()
    assert snap is not None and snap.metadata.index == 5
    SnapshotStore(tmp_path)
    assert sorted(os.listdir(tmp_path)) == [snapshot_name(1, 5)]


def test_newest_restricted_to_wal_markers(tmp_path: Path) -> None:
    """A snapshot file without a WAL marker (crash between the two) is not used."""
    snaps = SnapshotStore(tmp_path / "snap")
    with WAL.create(tmp_path / "wal", segment_size=4096) as wal:
        wal.save(HardState(1, 1, 20), [Entry(1, i, data=b"e") for i in range(1, 21)])
        snaps.save(Snapshot(meta(10), b"at 10"))
        wal.save_snapshot(meta(10))
        snaps.save(Snapshot(meta(20), b"at 20"))  # crash before its marker
    markers = valid_snapshot_markers(tmp_path / "wal")
    snap = snaps.load_newest(markers)
    assert snap is not None and snap.data == b"at 10"
    w, rec = WAL.open(tmp_path / "wal", snap.metadata, segment_size=4096)
    w.close()
    assert [e.index for e in rec.entries] == list(range(11, 21))


def test_failed_save_leaves_nothing(tmp_path: Path) -> None:
    """A writer dying mid-stream leaves neither a partial snapshot nor a temp file."""
    store = SnapshotStore(tmp_path)
    store.save(Snapshot(meta(1), b"old"))

    def chunks() -> Iterator[bytes]:
        yield b"a" * 1000
        raise OSError("source failed")

    with pytest.raises(OSError, match="source failed"):
        store.save_chunks(meta(2), chunks())
    assert sorted(os.listdir(tmp_path)) == [snapshot_name(1, 1)]
    snap = store.load_newest()
    assert snap is not None and snap.data == b"old"

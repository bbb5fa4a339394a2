"""ENOSPC under the backend and the snapshot directory (a real full disk, via FUSE)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from chaos.disk import PowerLossDisk, fuse_available
from kvstore.mvcc.backend import Backend
from kvstore.raft.types import ConfState, Snapshot, SnapshotMetadata
from kvstore.storage import DiskFullError, SnapshotStore

pytestmark = pytest.mark.skipif(fuse_available() is not None, reason=str(fuse_available()))


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[PowerLossDisk]:
    d = PowerLossDisk(tmp_path / "data")
    d.mount()
    try:
        yield d
    finally:
        d.unmount()


def test_backend_commit_on_a_full_disk_fails_cleanly_and_keeps_earlier_commits(
    disk: PowerLossDisk,
) -> None:
    backend = Backend(disk.mount_point / "db", map_size=64 << 20)
    backend.put_rev(b"a", b"1" * 5000)
    backend.commit()
    disk.set_fault(full=True)
    backend.put_rev(b"b", b"2" * 50000)
    with pytest.raises(DiskFullError, match="no space left on device: committing the backend"):
        backend.commit()
    with pytest.raises(DiskFullError):  # refused from now on, never retried
        backend.put_rev(b"c", b"3")
    disk.set_fault(full=False)
    backend.close()
    disk.cut_power()  # and the power goes too: what is on disk must be the first commit
    disk.mount()
    reopened = Backend(disk.mount_point / "db", map_size=64 << 20)
    try:
        assert reopened.get_rev(b"a") == b"1" * 5000
        assert reopened.get_rev(b"b") is None
    finally:
        reopened.close()


def test_snapshot_save_on_a_full_disk_leaves_the_last_snapshot(disk: PowerLossDisk) -> None:
    store = SnapshotStore(disk.mount_point / "snap")
    meta = SnapshotMetadata(index=10, term=1, conf_state=ConfState(voters=(1,)))
    store.save(Snapshot(meta, b"old state"))
    disk.set_fault(full=True)
    newer = SnapshotMetadata(index=20, term=1, conf_state=ConfState(voters=(1,)))
    with pytest.raises(DiskFullError, match="no space left on device: saving the snapshot"):
        store.save(Snapshot(newer, b"new state" * 1000))
    disk.set_fault(full=False)
    assert [p.name for p in Path(store.dir).iterdir()] == [Path(store.list()[0].path).name]
    snap = store.load_newest()
    assert snap is not None and snap.data == b"old state"

"""The power-loss filesystem keeps exactly what was made durable (real FUSE mounts)."""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Iterator
from pathlib import Path

import lmdb
import pytest

from chaos.disk import PowerLossDisk, fuse_available

pytestmark = pytest.mark.skipif(fuse_available() is not None, reason=str(fuse_available()))


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[PowerLossDisk]:
    d = PowerLossDisk(tmp_path / "data")
    d.mount()
    try:
        yield d
    finally:
        d.unmount()


def _reboot(disk: PowerLossDisk) -> None:
    disk.cut_power()
    disk.mount()


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def test_unsynced_writes_are_lost_and_synced_ones_kept(disk: PowerLossDisk) -> None:
    root = disk.mount_point
    f = root / "log"
    with open(f, "wb") as out:
        out.write(b"durable|")
        out.flush()
        os.fsync(out.fileno())
        out.write(b"volatile")
    _fsync_path(root)  # the name is durable; the second write is not
    assert f.read_bytes() == b"durable|volatile"  # a reader sees everything before the cut
    assert disk.stats()["dirty_files"] == 1
    _reboot(disk)
    assert f.read_bytes() == b"durable|"


def test_a_synced_truncate_and_rewrite_leave_no_stale_bytes(disk: PowerLossDisk) -> None:
    f = disk.mount_point / "f"
    with open(f, "wb") as out:
        out.write(b"A" * 10000)
        out.flush()
        os.fsync(out.fileno())
    _fsync_path(disk.mount_point)
    with open(f, "r+b") as out:
        out.truncate(0)
        out.truncate(6000)  # zeros, not the old A's
        out.seek(5000)
        out.write(b"B")
        out.flush()
        os.fsync(out.fileno())
    _reboot(disk)
    data = f.read_bytes()
    assert len(data) == 6000 and data[5000:5001] == b"B"
    assert data.count(b"A") == 0 and data.count(0) == 5999


def test_a_name_is_durable_only_once_its_directory_is_synced(disk: PowerLossDisk) -> None:
    root = disk.mount_point
    (root / "dir").mkdir()
    _fsync_path(root)
    with open(root / "dir" / "synced-file-unsynced-name", "wb") as out:
        out.write(b"x")
        out.flush()
        os.fsync(out.fileno())
    _reboot(disk)
    assert (root / "dir").is_dir()
    assert not (root / "dir" / "synced-file-unsynced-name").exists()


def test_rename_over_a_file_is_durable_with_the_directory_sync(disk: PowerLossDisk) -> None:
    root = disk.mount_point
    target = root / "state"

    def replace(content: bytes, sync_dir: bool) -> None:
        tmp = root / "state.tmp"
        with open(tmp, "wb") as out:
            out.write(content)
            out.flush()
            os.fsync(out.fileno())
        os.rename(tmp, target)
        if sync_dir:
            _fsync_path(root)

    replace(b"one", sync_dir=True)
    replace(b"two", sync_dir=False)
    assert target.read_bytes() == b"two"
    _reboot(disk)
    assert target.read_bytes() == b"one"
    assert not (root / "state.tmp").exists()
    replace(b"three", sync_dir=True)
    _reboot(disk)
    assert target.read_bytes() == b"three"
    assert sorted(p.name for p in root.iterdir()) == ["state"]


def test_an_unlink_is_undone_unless_its_directory_is_synced(disk: PowerLossDisk) -> None:
    root = disk.mount_point
    for name in ("kept", "gone"):
        (root / name).write_bytes(name.encode())
        _fsync_path(root / name)
    _fsync_path(root)
    (root / "kept").unlink()
    _reboot(disk)
    assert (root / "kept").read_bytes() == b"kept"
    (root / "gone").unlink()
    _fsync_path(root)
    _reboot(disk)
    assert not (root / "gone").exists()


def test_o_dsync_writes_are_durable_when_they_return(disk: PowerLossDisk) -> None:
    f = disk.mount_point / "meta"
    f.write_bytes(b"")
    _fsync_path(disk.mount_point)
    fd = os.open(f, os.O_WRONLY | os.O_DSYNC)
    try:
        os.pwrite(fd, b"synchronous", 0)
    finally:
        os.close(fd)
    _reboot(disk)
    assert f.read_bytes() == b"synchronous"


def test_lmdb_commits_survive_a_power_cut_and_nothing_else_does(disk: PowerLossDisk) -> None:
    """LMDB (no writemap, sync on) is durable at commit: the simulation must agree."""
    path = disk.mount_point / "db"
    path.mkdir()
    _fsync_path(disk.mount_point)
    env = lmdb.open(str(path), map_size=64 << 20, sync=True, metasync=True, writemap=False)
    _fsync_path(path)  # LMDB never syncs the directory of the files it creates
    for i in range(50):
        with env.begin(write=True) as txn:
            txn.put(b"k%03d" % i, b"v" * 3000)
    txn = env.begin(write=True)
    txn.put(b"uncommitted", b"x")
    disk.cut_power()  # mid-transaction, the process still holding the env
    env.close()
    disk.mount()
    env = lmdb.open(str(path), map_size=64 << 20)
    try:
        with env.begin() as txn:
            assert txn.get(b"uncommitted") is None
            assert [k for k, _ in txn.cursor()] == [b"k%03d" % i for i in range(50)]
    finally:
        env.close()


def test_lmdb_without_sync_loses_commits_on_a_power_cut(disk: PowerLossDisk) -> None:
    """The check above can fail: with sync off, committed transactions do not survive."""
    path = disk.mount_point / "db"
    path.mkdir()
    env = lmdb.open(str(path), map_size=64 << 20, sync=False, metasync=False)
    _fsync_path(path)
    _fsync_path(disk.mount_point)
    with env.begin(write=True) as txn:
        txn.put(b"k", b"v")
    disk.cut_power()
    env.close()
    disk.mount()
    env = lmdb.open(str(path), map_size=64 << 20)
    try:
        with env.begin() as txn:
            assert txn.get(b"k") is None
    finally:
        env.close()


def test_faults_full_failing_and_slow_disk(disk: PowerLossDisk) -> None:
    f = disk.mount_point / "f"
    f.write_bytes(b"before")
    disk.set_fault(full=True)
    with pytest.raises(OSError) as full:
        f.write_bytes(b"after")
    assert full.value.errno == errno.ENOSPC
    disk.set_fault(full=False, fsync_error=True)
    with pytest.raises(OSError) as failed:
        _fsync_path(f)
    assert failed.value.errno == errno.EIO
    disk.set_fault(fsync_error=False, fsync_delay_ms=300)
    t0 = time.monotonic()
    _fsync_path(f)
    assert time.monotonic() - t0 >= 0.3
    disk.heal()
    assert disk.stats()["fsync_delay_ms"] == 0

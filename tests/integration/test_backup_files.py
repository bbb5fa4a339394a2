"""``kvstore snapshot status|restore`` on damaged, foreign and old-format files.

A bad file gets one line on stderr and exit status 1, and a restore leaves no
member directory behind. Backups in our previous (LMDB) format still work.
"""

from __future__ import annotations

import hashlib
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from kvstore._pb.etcdserverpb import rpc_pb2
from kvstore.mvcc import MVCCStore, open_store
from kvstore.server.backup import write_etcd_backup
from kvstore.storage.bbolt import PAGE_SIZE


def kvstore_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kvstore.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def fill(store: MVCCStore) -> int:
    for i in range(300):
        store.execute(rpc_pb2.PutRequest(key=b"/f/%03d" % i, value=b"v" * 100))
    store.execute(rpc_pb2.DeleteRangeRequest(key=b"/f/000"))
    return store.current_revision


def with_digest(db: bytes) -> bytes:
    return db + hashlib.sha256(db).digest()


@pytest.fixture(scope="module")
def etcd_backup(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, int]:
    """An etcd-format backup of a small store: (file bytes, revision)."""
    root = tmp_path_factory.mktemp("src")
    store, _ = open_store(root / "db")
    try:
        revision = fill(store)
        db = write_etcd_backup(store.open_view(), root / "out.db", term=1, cluster_version="3.5.0")
    finally:
        store.close()
    return with_digest(db.read_bytes()), revision


def damage(data: bytes, how: str) -> bytes:
    db = bytearray(data[:-32])
    if how == "truncated at a page":
        return with_digest(bytes(db[: len(db) - PAGE_SIZE]))  # digest fine, pages missing
    if how == "truncated anywhere":
        return data[: len(data) // 2 + 77]
    if how == "a byte flipped":
        db[len(db) // 2] ^= 0xFF
        return bytes(db) + data[-32:]
    if how == "a page header broken, digest redone":
        db[2 * PAGE_SIZE : 2 * PAGE_SIZE + 8] = struct.pack("<Q", 12345)
        return with_digest(bytes(db))
    if how == "empty":
        return b""
    if how == "foreign":
        return b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 40
    raise AssertionError(how)


@pytest.mark.parametrize(
    ("how", "says"),
    [
        ("truncated at a page", "truncated"),
        ("truncated anywhere", "no SHA-256 trailer (truncated"),
        ("a byte flipped", "SHA-256 mismatch"),
        ("a page header broken, digest redone", "identifies itself as page"),
        ("empty", "not a backup"),
        ("foreign", "not a backup"),
    ],
)
def test_a_bad_file_gets_one_line_and_no_data_dir(
    tmp_path: Path, etcd_backup: tuple[bytes, int], how: str, says: str
) -> None:
    bad = tmp_path / "bad.db"
    bad.write_bytes(damage(etcd_backup[0], how))
    for command in (["status"], ["restore", "--data-dir", str(tmp_path / "data")]):
        proc = kvstore_cli("snapshot", *command, str(bad))
        assert proc.returncode == 1, proc
        assert proc.stderr.startswith(f"kvstore snapshot {command[0]}: "), proc.stderr
        assert says in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr
        assert not proc.stdout
    assert not (tmp_path / "data").exists()  # nothing half-restored, no scratch left behind


def test_a_bare_database_needs_skip_hash_check(
    tmp_path: Path, etcd_backup: tuple[bytes, int]
) -> None:
    bare = tmp_path / "db"
    bare.write_bytes(etcd_backup[0][:-32])
    refused = kvstore_cli("snapshot", "status", str(bare))
    assert refused.returncode == 1 and "--skip-hash-check" in refused.stderr
    taken = kvstore_cli(
        "snapshot", "restore", "--skip-hash-check", "--data-dir", str(tmp_path / "d"), str(bare)
    )
    assert taken.returncode == 0, taken.stderr
    assert f"revision {etcd_backup[1]}, 299 keys" in taken.stdout


def test_backups_in_our_previous_lmdb_format_still_restore(tmp_path: Path) -> None:
    store, _ = open_store(tmp_path / "src")
    try:
        revision = fill(store)
        data = store.snapshot(tmp_path / "copy")  # the LMDB file the old stream carried
    finally:
        store.close()
    old = tmp_path / "old.db"
    old.write_bytes(with_digest(data.read_bytes()))
    status = kvstore_cli("snapshot", "status", str(old))
    assert status.returncode == 0, status.stderr
    assert f"revision {revision}, 299 keys" in status.stdout
    assert "previous LMDB format" in status.stdout
    restored = kvstore_cli("snapshot", "restore", "--data-dir", str(tmp_path / "new"), str(old))
    assert restored.returncode == 0, restored.stderr
    again, _ = open_store(tmp_path / "new" / "member" / "db")
    try:
        assert again.current_revision == revision and again.consistent_index == 0
    finally:
        again.close()

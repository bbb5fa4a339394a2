"""Backups: the file ``etcdctl snapshot save`` receives, and restoring a member from it.

The stream is the backend's compacted LMDB file followed by its SHA-256 (as
etcd appends one to its bbolt file, and etcdctl checks it is there). The file
is our backend's, not etcd's: restore it with ``kvstore snapshot restore``,
which plays the part of ``etcdutl snapshot restore``: it checks the digest,
installs the database into a fresh data directory and forgets the old
cluster's members and Raft position, so the member starts a new cluster (flags as for
``kvstore serve``) with the data, revisions and leases of the backup.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from kvstore._pb.etcdserverpb import rpc_pb2
from kvstore.mvcc import open_store
from kvstore.server.membership import MEMBERS_RECORD

DIGEST_BYTES = hashlib.sha256().digest_size
CHUNK_BYTES = 1024 * 1024
ALL_KEYS = rpc_pb2.RangeRequest(key=b"\x00", range_end=b"\x00", count_only=True)


class BackupError(ValueError):
    """A backup file that is not whole or not ours: one line for the user."""


def stream_backup(db_file: Path) -> Iterator[tuple[int, bytes]]:
    """(bytes still to come after this piece, piece) for the database, then its digest."""
    size = db_file.stat().st_size
    digest = hashlib.sha256()
    sent = 0
    with open(db_file, "rb") as f:
        while piece := f.read(CHUNK_BYTES):
            digest.update(piece)
            sent += len(piece)
            yield size - sent, piece
    yield 0, digest.digest()


@dataclass(frozen=True)
class BackupStatus:
    revision: int
    keys: int
    size: int


def _checked_database(backup: Path) -> int:
    """Length of the database part of ``backup``, once its digest is verified."""
    size = backup.stat().st_size
    if size <= DIGEST_BYTES:
        raise BackupError(f"{backup}: too small to be a backup ({size} bytes)")
    digest = hashlib.sha256()
    with open(backup, "rb") as f:
        left = size - DIGEST_BYTES
        while left:
            piece = f.read(min(CHUNK_BYTES, left))
            if not piece:
                raise BackupError(f"{backup}: truncated")
            digest.update(piece)
            left -= len(piece)
        if f.read() != digest.digest():
            raise BackupError(f"{backup}: SHA-256 mismatch (truncated or corrupt)")
    return size - DIGEST_BYTES


def _install(backup: Path, db_dir: Path) -> None:
    length = _checked_database(backup)
    db_dir.mkdir(parents=True)
    with open(backup, "rb") as src, open(db_dir / "data.mdb", "wb") as dst:
        left = length
        while left:
            piece = src.read(min(CHUNK_BYTES, left))
            dst.write(piece)
            left -= len(piece)
        dst.flush()
        os.fsync(dst.fileno())


def backup_status(backup: Path, scratch: Path) -> BackupStatus:
    """Verify ``backup`` and read its revision and key count (``scratch`` is removed)."""
    try:
        _install(backup, scratch)
        store, _ = open_store(scratch)
        try:
            keys = store.range(ALL_KEYS).count
            return BackupStatus(store.current_revision, keys, backup.stat().st_size)
        finally:
            store.close()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def restore_backup(backup: Path, data_dir: Path) -> BackupStatus:
    """Install ``backup`` as the state of a new member whose data dir is ``data_dir``."""
    member = data_dir / "member"
    if member.exists():
        raise BackupError(f"data dir {data_dir} already holds a member; restore into a new one")
    db_dir = member / "db"
    _install(backup, db_dir)
    store, _ = open_store(db_dir)
    try:
        # The new cluster has its own members, and its log starts over: everything in
        # the backup counts as applied before its first entry.
        store.delete_record(MEMBERS_RECORD)
        store.reset_consistent_index()
        keys = store.range(ALL_KEYS).count
        return BackupStatus(store.current_revision, keys, backup.stat().st_size)
    finally:
        store.close()

"""Backups in etcd's format: what ``etcdctl snapshot save`` receives, and restoring from it.

The stream is a bbolt file laid out as etcd's backend (see ``etcd_format``)
followed by its SHA-256, exactly what etcd streams: ``etcdctl``/``etcdutl
snapshot status`` read it and ``etcdutl snapshot restore`` makes a real etcd
data dir of it. ``kvstore snapshot restore`` plays ``etcdutl``'s part for our
store and takes the same files, whether a real etcd or we made them: it checks
the digest and the bbolt structure, builds the member's backend in a scratch
directory, forgets the old cluster's members and Raft position, and only then
moves the result into place, so a bad file never leaves a half-restored data
dir. Backups made before, in our LMDB format, are still read.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import lmdb

from kvstore._pb.etcdserverpb import rpc_pb2
from kvstore.mvcc import backend as bk
from kvstore.mvcc import open_store
from kvstore.mvcc.store import MVCCStore, StoreView
from kvstore.server.etcd_format import (
    HASH_IGNORED,
    EtcdFormatError,
    backend_hash,
    etcd_buckets,
    import_etcd_backend,
)
from kvstore.server.membership import MEMBERS_RECORD
from kvstore.storage.bbolt import MAGIC as BOLT_MAGIC
from kvstore.storage.bbolt import BoltError, BoltReader, BoltWriter

DIGEST_BYTES = hashlib.sha256().digest_size
CHUNK_BYTES = 32 * 1024
"""Bytes per SnapshotResponse, as etcd sends them."""
ALL_KEYS = rpc_pb2.RangeRequest(key=b"\x00", range_end=b"\x00", count_only=True)
_LMDB_MAGIC = 0xBEEFC0DE
_MAGIC_OFFSET = 16


class BackupError(ValueError):
    """A backup file that is not whole or not a backup: one line for the user."""


def write_etcd_backup(view: StoreView, dest: Path, *, term: int, cluster_version: str) -> Path:
    """Write the pinned state as etcd's bbolt file at ``dest`` and release the view."""
    try:
        with open(dest, "wb") as out:
            writer = BoltWriter(out)
            for name, items in etcd_buckets(view, term=term, cluster_version=cluster_version):
                writer.add_bucket(name, items)
            writer.finish()
        return dest
    finally:
        view.release()


def backend_hash_of(view: StoreView, *, term: int, cluster_version: str) -> int:
    """Maintenance.Hash of the pinned state (etcd's, ignoring member-local keys); releases it."""
    try:
        buckets = etcd_buckets(view, term=term, cluster_version=cluster_version)
        return backend_hash(buckets, HASH_IGNORED)
    finally:
        view.release()


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
    """Live keys at ``revision``."""
    size: int
    format: str
    """"etcd" (bbolt) or "lmdb" (our format before etcd's)."""
    etcd_hash: int | None = None
    """What ``etcdutl snapshot status`` prints: CRC-32C of every bucket."""
    etcd_total_keys: int | None = None
    """What ``etcdutl snapshot status`` counts: entries in all buckets."""


def _database_length(backup: Path, skip_hash_check: bool) -> int:
    """Length of the database part of ``backup``, its digest verified as etcdutl does.

    A file whose size is 32 past a multiple of 512 ends with the SHA-256 of the
    rest; any other file is a bare database, taken only with ``skip_hash_check``.
    """
    size = backup.stat().st_size
    if size % 512 != DIGEST_BYTES:
        if skip_hash_check:
            return size
        raise BackupError(
            f"{backup}: no SHA-256 trailer (truncated, or a bare database: "
            "then pass --skip-hash-check)"
        )
    if skip_hash_check:
        return size - DIGEST_BYTES
    digest = hashlib.sha256()
    with open(backup, "rb") as f:
        left = size - DIGEST_BYTES
        while left:
            piece = f.read(min(1 << 20, left))
            if not piece:
                raise BackupError(f"{backup}: truncated")
            digest.update(piece)
            left -= len(piece)
        if f.read() != digest.digest():
            raise BackupError(f"{backup}: SHA-256 mismatch (truncated or corrupt)")
    return size - DIGEST_BYTES


def _format_of(backup: Path) -> str:
    with open(backup, "rb") as f:
        head = f.read(_MAGIC_OFFSET + 4)
    if len(head) == _MAGIC_OFFSET + 4:
        magic = int.from_bytes(head[_MAGIC_OFFSET:], "little")
        if magic == BOLT_MAGIC:
            return "etcd"
        if magic == _LMDB_MAGIC:
            return "lmdb"
    raise BackupError(f"{backup}: not a backup (neither etcd's bbolt nor kvstore's LMDB format)")


def _build_backend(backup: Path, db_dir: Path, skip_hash_check: bool) -> BackupStatus:
    """Check ``backup`` and make our backend of it in the new directory ``db_dir``."""
    kind = _format_of(backup)
    length = _database_length(backup, skip_hash_check)
    if kind == "lmdb":
        db_dir.mkdir(parents=True)
        _copy_prefix(backup, db_dir / "data.mdb", length)
        return BackupStatus(0, 0, length, kind)
    try:
        with BoltReader(backup) as reader:
            if reader.meta.high_water * reader.page_size > length:
                raise BackupError(f"{backup}: truncated (the database ends past its digest)")
            reader.check()
            hashed = backend_hash(((n, reader.items(n)) for n, _ in reader.buckets()), set())
            total = sum(1 for n, _ in reader.buckets() for _ in reader.items(n))
            backend = bk.Backend(db_dir)
            try:
                import_etcd_backend(reader, backend)
            finally:
                backend.close()
            size = reader.meta.high_water * reader.page_size
    except (BoltError, EtcdFormatError) as error:
        raise BackupError(f"{backup}: {error}") from None
    return BackupStatus(0, 0, size, kind, hashed, total)


def _copy_prefix(src: Path, dst: Path, length: int) -> None:
    with open(src, "rb") as f_in, open(dst, "wb") as f_out:
        left = length
        while left:
            piece = f_in.read(min(1 << 20, left))
            if not piece:
                raise BackupError(f"{src}: truncated")
            f_out.write(piece)
            left -= len(piece)
        f_out.flush()
        os.fsync(f_out.fileno())


def _open_store(db_dir: Path, backup: Path) -> MVCCStore:
    try:
        store, _ = open_store(db_dir)
    except lmdb.Error as error:
        raise BackupError(f"{backup}: not a sound LMDB database ({error})") from None
    return store


def _with_counts(status: BackupStatus, store: MVCCStore) -> BackupStatus:
    return BackupStatus(
        store.current_revision,
        store.range(ALL_KEYS).count,
        status.size,
        status.format,
        status.etcd_hash,
        status.etcd_total_keys,
    )


def backup_status(backup: Path, *, skip_hash_check: bool = False) -> BackupStatus:
    """Verify ``backup`` (either format) and read its revision and key counts."""
    with tempfile.TemporaryDirectory(prefix="kvstore-status-") as scratch:
        status = _build_backend(backup, Path(scratch) / "db", skip_hash_check)
        store = _open_store(Path(scratch) / "db", backup)
        try:
            return _with_counts(status, store)
        finally:
            store.close()


def restore_backup(backup: Path, data_dir: Path, *, skip_hash_check: bool = False) -> BackupStatus:
    """Install ``backup`` as the state of a new member whose data dir is ``data_dir``.

    All or nothing: the member directory appears only once the backend is complete.
    """
    member = data_dir / "member"
    if member.exists():
        raise BackupError(f"data dir {data_dir} already holds a member; restore into a new one")
    created = not data_dir.exists()
    data_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".restore-", dir=data_dir))
    restored = False
    try:
        status = _build_backend(backup, work / "member" / "db", skip_hash_check)
        store = _open_store(work / "member" / "db", backup)
        try:
            # The new cluster has its own members, and its log starts over: everything in
            # the backup counts as applied before its first entry.
            store.delete_record(MEMBERS_RECORD)
            store.reset_consistent_index()
            status = _with_counts(status, store)
        finally:
            store.close()
        os.rename(work / "member", member)
        _fsync_dir(data_dir)
        restored = True
        return status
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if created and not restored:
            shutil.rmtree(data_dir, ignore_errors=True)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

"""LMDB backend: the key bucket, the meta record, leases, alarms and the auth buckets in one env.

Writes of a batch go to one long-lived LMDB write transaction that ``commit``
ends; reads inside the batch go through the same transaction so they see
applied-but-uncommitted writes. One thread owns a Backend (the apply loop).

Durability: the env is opened without ``writemap``, so LMDB writes pages with
``pwrite`` (the map is read-only), syncs them with ``fdatasync`` and then
writes the meta page through a second descriptor opened with ``O_DSYNC``. A
commit is durable once it returns, and nothing reaches the file through the
map, so a power cut keeps exactly the committed transactions. LMDB never syncs
a directory, so ``_open`` syncs the database directory (and its parent) after
creating the files: otherwise a power cut could lose the files themselves.
A failed commit (ENOSPC, EIO) raises :class:`DiskFaultError`: the batch is gone
and the backend refuses further commits (the WAL replays it after a restart).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import struct
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import lmdb

from kvstore.failpoints import failpoint
from kvstore.storage.dirs import fsync_dir, make_dirs_durable
from kvstore.storage.errors import DiskFaultError, disk_fault

log = logging.getLogger(__name__)

DEFAULT_MAP_SIZE = 8 << 30
"""Virtual size of the LMDB map (sparse): bounds the database size; the quota is lower."""

KEY_DB = b"key"
META_DB = b"meta"
LEASE_DB = b"lease"
ALARM_DB = b"alarm"
AUTH_DB = b"auth"
AUTH_USERS_DB = b"authUsers"
AUTH_ROLES_DB = b"authRoles"

META_CONSISTENT_INDEX = b"consistent_index"
META_COMPACT_REV = b"finishedCompactRev"
META_SCHEDULED_COMPACT_REV = b"scheduledCompactRev"

_I64 = struct.Struct(">q")
_LEASE = struct.Struct(">qq")
_ALARM = struct.Struct(">QI")  # member id, alarm type


class Backend:
    """The LMDB environment of one store."""

    def __init__(self, path: Path, map_size: int = DEFAULT_MAP_SIZE) -> None:
        self.path = Path(path)
        self.map_size = map_size
        # Read views handed to other threads (copies for snapshots): the env must
        # outlive them, so closing or replacing it waits until they are released.
        self._views = 0
        self._views_released = threading.Condition()
        self._failed: DiskFaultError | None = None
        self._open()

    def _open(self) -> None:
        created = not (self.path / "data.mdb").exists()
        make_dirs_durable(self.path)
        # sync=True: the WAL replays after consistent_index, but a torn backend would
        # leave the index ahead of the data, so every commit is durable.
        # writemap=False (LMDB's default, spelled out): pages reach the file by pwrite
        # and fdatasync only, never through a writable map.
        self.env = lmdb.open(
            str(self.path),
            map_size=self.map_size,
            max_dbs=16,
            sync=True,
            metasync=True,
            writemap=False,
        )
        if created:
            fsync_dir(self.path)
        self.key_db = self.env.open_db(KEY_DB)
        self.meta_db = self.env.open_db(META_DB)
        self.lease_db = self.env.open_db(LEASE_DB)
        self.alarm_db = self.env.open_db(ALARM_DB)
        # etcd's three auth buckets, with etcd's keys and encodings (authpb.User/Role).
        self.auth_db = self.env.open_db(AUTH_DB)
        self.auth_users_db = self.env.open_db(AUTH_USERS_DB)
        self.auth_roles_db = self.env.open_db(AUTH_ROLES_DB)
        self._txn: lmdb.Transaction | None = None
        self._size: int | None = None

    # ----- transactions -----

    def txn(self) -> lmdb.Transaction:
        """The batch's write transaction (begun on first use)."""
        txn = self._txn
        if txn is None:
            if self._failed is not None:
                raise self._failed
            txn = self._txn = self.env.begin(write=True)
        return txn

    def commit(self) -> None:
        """Make the batch durable; a disk failure raises :class:`DiskFaultError` (fatal)."""
        if self._failed is not None:
            raise self._failed
        if self._txn is not None:
            txn, self._txn = self._txn, None
            self._size = None
            try:
                failpoint("backendBeforeCommit")
                txn.commit()
                failpoint("backendAfterCommit")
            except (lmdb.Error, OSError) as error:
                fault = disk_fault("committing the backend", str(self.path), _os_error(error))
                self._failed = fault
                with contextlib.suppress(lmdb.Error):
                    txn.abort()
                raise self._failed from error

    def abort(self) -> None:
        """Drop the batch (tests use it to simulate a crash before commit)."""
        if self._txn is not None:
            self._txn.abort()
            self._txn = None

    def close(self) -> None:
        """Abort any uncommitted batch and close the env (after any open view is released)."""
        self.abort()
        with self._views_released:
            self._views_released.wait_for(lambda: self._views == 0)
        self.env.close()

    # ----- key bucket -----

    def put_rev(self, key: bytes, value: bytes) -> None:
        self.txn().put(key, value, db=self.key_db)

    def get_rev(self, key: bytes) -> bytes | None:
        # buffers=False (the default): LMDB hands back bytes, not memoryviews.
        return cast("bytes | None", self.txn().get(key, db=self.key_db))

    def iter_revs(
        self, start: bytes = b"", stop: bytes | None = None
    ) -> Iterator[tuple[bytes, bytes]]:
        """(rev key, value) pairs from ``start`` (inclusive) to ``stop`` (exclusive)."""
        cur = self.txn().cursor(db=self.key_db)
        if not cur.set_range(start):
            return
        for k, v in cur:
            if stop is not None and cast(bytes, k) >= stop:
                return
            yield cast(bytes, k), cast(bytes, v)

    def last_rev_key(self) -> bytes | None:
        cur = self.txn().cursor(db=self.key_db)
        if not cur.last():
            return None
        return cast(bytes, cur.key())

    def delete_revs_where(
        self, start: bytes, stop: bytes, keep: set[bytes], limit: int
    ) -> tuple[int, bytes | None]:
        """Delete up to ``limit`` rev keys in [start, stop) that are not in ``keep``.

        Returns (deleted, where to resume) with None once [start, stop) is done.
        """
        assert limit > 0
        cur = self.txn().cursor(db=self.key_db)
        deleted = 0
        if not cur.set_range(start):
            return 0, None
        while True:
            k = cast(bytes, cur.key())
            if k >= stop:
                return deleted, None
            if deleted >= limit:
                return deleted, k
            if k in keep:
                if not cur.next():
                    return deleted, None
            else:
                deleted += 1
                if not cur.delete():
                    return deleted, None

    # ----- meta -----

    def get_meta(self, name: bytes, default: int) -> int:
        raw = self.txn().get(name, db=self.meta_db)
        return default if raw is None else int(_I64.unpack(raw)[0])

    def put_meta(self, name: bytes, value: int) -> None:
        self.txn().put(name, _I64.pack(value), db=self.meta_db)

    def get_meta_bytes(self, name: bytes) -> bytes | None:
        return cast("bytes | None", self.txn().get(name, db=self.meta_db))

    def put_meta_bytes(self, name: bytes, value: bytes) -> None:
        self.txn().put(name, value, db=self.meta_db)

    def delete_meta(self, name: bytes) -> None:
        self.txn().delete(name, db=self.meta_db)

    # ----- leases -----

    def put_lease(self, lease_id: int, ttl: int, remaining_ttl: int) -> None:
        self.txn().put(_I64.pack(lease_id), _LEASE.pack(ttl, remaining_ttl), db=self.lease_db)

    def delete_lease(self, lease_id: int) -> None:
        self.txn().delete(_I64.pack(lease_id), db=self.lease_db)

    def iter_leases(self) -> Iterator[tuple[int, int, int]]:
        for k, v in self.txn().cursor(db=self.lease_db):
            ttl, remaining = _LEASE.unpack(v)
            yield int(_I64.unpack(k)[0]), int(ttl), int(remaining)

    # ----- alarms -----

    def put_alarm(self, member_id: int, alarm: int) -> None:
        self.txn().put(_ALARM.pack(member_id, alarm), b"", db=self.alarm_db)

    def delete_alarm(self, member_id: int, alarm: int) -> None:
        self.txn().delete(_ALARM.pack(member_id, alarm), db=self.alarm_db)

    def iter_alarms(self) -> Iterator[tuple[int, int]]:
        for k in self.txn().cursor(db=self.alarm_db).iternext(values=False):
            member_id, alarm = _ALARM.unpack(k)
            yield int(member_id), int(alarm)

    # ----- auth (replicated like every bucket here; read by kvstore.auth) -----

    def get_auth(self, db: lmdb._Database, name: bytes) -> bytes | None:
        return cast("bytes | None", self.txn().get(name, db=db))

    def put_auth(self, db: lmdb._Database, name: bytes, value: bytes) -> None:
        self.txn().put(name, value, db=db)

    def delete_auth(self, db: lmdb._Database, name: bytes) -> None:
        self.txn().delete(name, db=db)

    def iter_auth(self, db: lmdb._Database) -> Iterator[tuple[bytes, bytes]]:
        for k, v in self.txn().cursor(db=db):
            yield cast(bytes, k), cast(bytes, v)

    # ----- size, snapshot -----

    def size(self) -> int:
        """Bytes of the database in use (pages up to the last used one), as of the last commit.

        Cached between commits: every write asks (the quota check), and only a commit
        or reopening can change it.
        """
        if self._size is None:
            info = self.env.info()
            stat = self.env.stat()
            self._size = int((info["last_pgno"] + 1) * stat["psize"])
        return self._size

    def open_view(self) -> lmdb.Transaction:
        """Commit, then a read-only view of exactly this state, for ``copy_view`` in any thread.

        The view must be released by ``copy_view``; until then, ``close`` waits.
        """
        self.commit()
        view = self.env.begin()
        with self._views_released:
            self._views += 1
        return view

    def copy_view(self, view: lmdb.Transaction, dest_dir: Path) -> Path:
        """Write a compacted copy of ``view`` into ``dest_dir`` and release the view."""
        try:
            dest_dir.mkdir(parents=True, exist_ok=True)
            target = dest_dir / "data.mdb"
            if target.exists():
                target.unlink()
            self.env.copy(str(dest_dir), compact=True, txn=view)
            return target
        finally:
            self.release_view(view)

    def release_view(self, view: lmdb.Transaction) -> None:
        """End a view from ``open_view`` (any thread)."""
        view.abort()
        with self._views_released:
            self._views -= 1
            self._views_released.notify_all()

    def copy_to(self, dest_dir: Path) -> Path:
        """Commit, then write a compacted copy of the env into ``dest_dir``; returns the file."""
        return self.copy_view(self.open_view(), dest_dir)

    def defragment(self) -> None:
        """Commit, then rewrite the data file without its free pages (a compacted copy)."""
        work = self.path / "defrag"
        if work.exists():
            shutil.rmtree(work)
        failpoint("defragBeforeCopy")
        self.replace_with(self.copy_to(work), move=True, point="defragBeforeRename")
        failpoint("defragAfterRename")
        shutil.rmtree(work)

    def replace_with(
        self, src_file: Path, *, move: bool = False, point: str = "backendBeforeRestore"
    ) -> None:
        """Close, replace the data file by ``src_file`` (a ``copy_to`` result), reopen.

        ``point``: the failpoint just before the rename that replaces the data file.
        """
        self.close()
        tmp = self.path / "data.mdb.restore"
        if move:
            os.replace(src_file, tmp)
        else:
            shutil.copyfile(src_file, tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        failpoint(point)
        os.replace(tmp, self.path / "data.mdb")
        fsync_dir(self.path)
        lock = self.path / "lock.mdb"
        if lock.exists():
            lock.unlink()
        self._open()


def _os_error(error: lmdb.Error | OSError) -> OSError:
    """The OS error behind an LMDB error (LMDB reports ENOSPC as DiskError)."""
    if isinstance(error, OSError):
        return error
    if isinstance(error, lmdb.DiskError):
        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    code = getattr(error, "code", 0) or errno.EIO
    return OSError(code, str(error))

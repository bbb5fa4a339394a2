"""Durable storage of a node: the Raft write-ahead log and snapshot files.

* :mod:`kvstore.storage.wal` -- segmented, checksummed WAL of entries and hard
  state (:class:`WAL`).
* :mod:`kvstore.storage.snap` -- atomic, checksummed snapshot files
  (:class:`SnapshotStore`).
* :mod:`kvstore.storage.errors` -- the exception tree (:class:`StorageError`).
* ``python -m kvstore.storage.bench`` -- WAL append + fsync micro-benchmark.
"""

from kvstore.storage.errors import (
    DiskFaultError,
    DiskFullError,
    SnapshotCorruptError,
    SnapshotError,
    StorageError,
    WALCorruptError,
    WALError,
)
from kvstore.storage.snap import SnapshotStore
from kvstore.storage.wal import WAL, Recovered, SnapshotMarker, read_wal, valid_snapshot_markers

__all__ = [
    "WAL",
    "DiskFaultError",
    "DiskFullError",
    "Recovered",
    "SnapshotCorruptError",
    "SnapshotError",
    "SnapshotMarker",
    "SnapshotStore",
    "StorageError",
    "WALCorruptError",
    "WALError",
    "read_wal",
    "valid_snapshot_markers",
]

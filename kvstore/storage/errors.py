"""Exception tree of the storage layer (WAL and snapshot files).

Everything raised on purpose by :mod:`kvstore.storage` derives from
:class:`StorageError`, so a server can map the whole family to one fatal
"storage failure" path while tests can match on the precise subclass.
"""

from __future__ import annotations

import errno


class StorageError(Exception):
    """Base class of every storage-layer error."""


class WALError(StorageError):
    """Base class of write-ahead-log errors."""


class WALNotFoundError(WALError):
    """The directory holds no WAL segment (use :meth:`WAL.create`)."""


class WALExistsError(WALError):
    """:meth:`WAL.create` was asked to create a WAL where one already exists."""


class WALLockedError(WALError):
    """Another open WAL (in this or another process) holds the directory lock."""


class WALClosedError(WALError):
    """The WAL was used after :meth:`WAL.close`."""


class WALFailedError(WALError):
    """An earlier write or fsync failed; the on-disk state is unknown.

    The WAL refuses further use: retrying an fsync after a failure is unsafe
    on Linux (the kernel may have dropped the dirty pages), so the only correct
    reaction is to stop and recover from disk by reopening.
    """


class WALCorruptError(WALError):
    """The WAL is damaged somewhere other than a torn tail.

    ``path`` names the segment file and ``offset`` the byte offset of the
    first damaged record in it (``0`` for file-level problems such as a
    missing segment).
    """

    def __init__(self, path: str, offset: int, reason: str) -> None:
        super().__init__(f"WAL corrupt: {path} at byte offset {offset}: {reason}")
        self.path = path
        self.offset = offset
        self.reason = reason


class WALSnapshotNotFoundError(WALError):
    """No snapshot marker with the requested (index, term) is in the WAL."""


class WALMissingEntriesError(WALError):
    """The WAL cannot supply a contiguous log after the requested snapshot.

    Raised when the requested snapshot is older than the first entry the WAL
    still holds (leading segments released or lost), or older than a snapshot
    the WAL records as installed.
    """


class SnapshotError(StorageError):
    """Base class of snapshot-file errors."""


class SnapshotCorruptError(SnapshotError):
    """A snapshot file fails its checksum or is malformed."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"snapshot corrupt: {path}: {reason}")
        self.path = path
        self.reason = reason


class NoSnapshotError(SnapshotError):
    """No valid snapshot file is available."""


class DiskFaultError(StorageError):
    """The disk failed under a write or an fsync: fatal, the member must stop.

    Never retried: after a failed fsync Linux may have dropped the dirty pages
    and marked them clean, so a second fsync "succeeds" without the data. What
    was acknowledged before the failure is on disk (it was synced); restarting
    recovers from there. ``errno`` is the OS error's.
    """

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.errno = code


class DiskFullError(DiskFaultError):
    """A write found no space left (ENOSPC, EDQUOT); nothing was acknowledged past it."""


_FULL_ERRNOS = frozenset((errno.ENOSPC, errno.EDQUOT))


def disk_fault(what: str, path: str, error: OSError) -> DiskFaultError:
    """The fatal error for OS error ``error`` while doing ``what`` on ``path``."""
    if error.errno in _FULL_ERRNOS:
        return DiskFullError(
            f"no space left on device: {what} {path} failed ({error.strerror}); this member "
            "stops taking writes: free space and restart it (everything acknowledged is on disk)",
            error.errno,
        )
    return DiskFaultError(
        f"disk failure: {what} {path} failed ({error.strerror or error}); stopping: after a "
        "failed write or fsync the kernel may have dropped the unwritten pages, so nothing "
        "since the last successful fsync can be trusted; restart the member to recover from disk",
        error.errno,
    )

"""Raft snapshot files: metadata plus application state, checksummed, written atomically.

File name: ``<term:016x>-<index:016x>.snap``. Layout (little endian)::

    8s magic | u16 version | u32 meta_len | meta | data ... | u64 data_len | u32 crc

    meta = u64 index | u64 term | u16 n_voters | u16 n_learners |
           u16 n_voters_outgoing | u16 n_learners_next | u8 auto_leave |
           u64 ids of those four lists, in that order

``crc`` is zlib.crc32 of every byte before it, so the whole file is covered.
``data_len`` is in the trailer so data can be streamed in without knowing its
size up front; a reader checks it against the file size.

A file is written to ``<name>.tmp``, fsync'ed, renamed into place and the
directory fsync'ed, so a crash leaves either the complete new file or none.
The newest ``keep`` files are retained. :meth:`SnapshotStore.load_newest`
verifies candidates newest first; a corrupt one is logged, renamed to
``<name>.broken`` (kept for inspection, never picked again) and the next older
one is tried.

Typical driver sequence when taking a snapshot at ``(index, term)``::

    snaps.save(Snapshot(metadata, state_bytes))  # 1. the file
    wal.save_snapshot(metadata)                  # 2. the WAL marker
    wal.release_to(metadata.index)               # 3. old segments

and on restart::

    markers = valid_snapshot_markers(wal_dir)
    snap = snaps.load_newest(markers)            # newest file the WAL can continue
    wal, rec = WAL.open(wal_dir, snap.metadata if snap else None)
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import re
import struct
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Final, Protocol

from kvstore.failpoints import failpoint
from kvstore.raft.types import ConfState, Snapshot, SnapshotMetadata
from kvstore.storage.dirs import fsync_dir, make_dirs_durable
from kvstore.storage.errors import SnapshotCorruptError, SnapshotError, disk_fault

__all__ = [
    "DEFAULT_KEEP",
    "SnapshotFile",
    "SnapshotStore",
    "decode_metadata",
    "encode_metadata",
    "snapshot_name",
]

log = logging.getLogger(__name__)

DEFAULT_KEEP: Final = 5
"""How many snapshot files are retained by default."""

CHUNK_SIZE: Final = 1 << 20
MAGIC: Final = b"kvsSNAP\x00"
FORMAT_VERSION: Final = 1
_SUFFIX: Final = ".snap"
_TMP_SUFFIX: Final = ".tmp"
_BROKEN_SUFFIX: Final = ".broken"
_NAME_RE: Final = re.compile(r"^([0-9a-f]{16})-([0-9a-f]{16})\.snap$")

_HEADER = struct.Struct("<8sHI")  # magic, version, meta_len
_TRAILER = struct.Struct("<QI")  # data_len, crc
_DATA_LEN = struct.Struct("<Q")
_CRC = struct.Struct("<I")
_META = struct.Struct("<QQHHHHB")  # index, term, 4 list lengths, auto_leave


class _IndexTerm(Protocol):
    @property
    def index(self) -> int: ...

    @property
    def term(self) -> int: ...


def snapshot_name(term: int, index: int) -> str:
    """File name of the snapshot at (term, index)."""
    return f"{term:016x}-{index:016x}{_SUFFIX}"


def encode_metadata(meta: SnapshotMetadata) -> bytes:
    """Compact binary encoding of snapshot metadata (index, term, conf state)."""
    cs = meta.conf_state
    lists = (cs.voters, cs.learners, cs.voters_outgoing, cs.learners_next)
    ids = [i for lst in lists for i in lst]
    head = _META.pack(meta.index, meta.term, *(len(lst) for lst in lists), int(cs.auto_leave))
    return head + struct.pack(f"<{len(ids)}Q", *ids)


def decode_metadata(buf: bytes) -> SnapshotMetadata:
    """Inverse of :func:`encode_metadata`; raises ValueError if malformed."""
    if len(buf) < _META.size:
        raise ValueError("metadata too short")
    index, term, nv, nl, nvo, nln, auto = _META.unpack_from(buf)
    total = nv + nl + nvo + nln
    if len(buf) != _META.size + 8 * total or auto > 1:
        raise ValueError("metadata length mismatch")
    ids = struct.unpack_from(f"<{total}Q", buf, _META.size)
    cuts = [0, nv, nv + nl, nv + nl + nvo, total]
    parts = [tuple(ids[a:b]) for a, b in itertools.pairwise(cuts)]
    cs = ConfState(parts[0], parts[1], parts[2], parts[3], bool(auto))
    return SnapshotMetadata(index=index, term=term, conf_state=cs)


@dataclass(slots=True, frozen=True)
class SnapshotFile:
    """A snapshot file on disk (name parsed, contents not yet verified)."""

    term: int
    index: int
    path: str


def _file_chunks(path: str | os.PathLike[str], chunk_size: int) -> Iterator[bytes]:
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            yield chunk


class SnapshotStore:
    """A directory of snapshot files. Not thread-safe; one owner."""

    def __init__(self, dirpath: str | os.PathLike[str], *, keep: int = DEFAULT_KEEP) -> None:
        """Use (creating if needed) ``dirpath``; remove leftover temporary files."""
        if keep < 1:
            raise ValueError("keep must be >= 1")
        self._dir = os.fspath(dirpath)
        self._keep = keep
        make_dirs_durable(self._dir)
        for name in os.listdir(self._dir):
            if name.endswith(_SUFFIX + _TMP_SUFFIX):
                log.warning("snap: removing leftover temporary file %s", name)
                os.unlink(os.path.join(self._dir, name))

    @property
    def dir(self) -> str:
        """The snapshot directory."""
        return self._dir

    # ---------------------------------------------------------------- listing

    def list(self) -> list[SnapshotFile]:
        """Snapshot files by name, oldest first (ordered by index, then term)."""
        out = []
        for name in os.listdir(self._dir):
            m = _NAME_RE.match(name)
            if m:
                term, index = int(m.group(1), 16), int(m.group(2), 16)
                out.append(SnapshotFile(term, index, os.path.join(self._dir, name)))
        out.sort(key=lambda s: (s.index, s.term))
        return out

    # ---------------------------------------------------------------- writing

    def save(self, snapshot: Snapshot) -> str:
        """Write ``snapshot`` atomically, then drop files beyond ``keep``. Returns the path."""
        return self.save_chunks(snapshot.metadata, (snapshot.data,))

    def save_from_file(
        self,
        metadata: SnapshotMetadata,
        src: str | os.PathLike[str],
        *,
        chunk_size: int = CHUNK_SIZE,
    ) -> str:
        """Like :meth:`save`, streaming the state from file ``src``."""
        return self.save_chunks(metadata, _file_chunks(src, chunk_size))

    def save_chunks(self, metadata: SnapshotMetadata, chunks: Iterable[bytes]) -> str:
        """Like :meth:`save`, streaming the state from an iterable of byte chunks."""
        if metadata.index <= 0:
            raise ValueError("cannot save an empty snapshot (index 0)")
        path = os.path.join(self._dir, snapshot_name(metadata.term, metadata.index))
        tmp = path + _TMP_SUFFIX
        meta = encode_metadata(metadata)
        failpoint("snapBeforeSave")
        try:
            with open(tmp, "wb") as f:
                head = _HEADER.pack(MAGIC, FORMAT_VERSION, len(meta)) + meta
                crc = zlib.crc32(head)
                f.write(head)
                data_len = 0
                for chunk in chunks:
                    crc = zlib.crc32(chunk, crc)
                    data_len += len(chunk)
                    f.write(chunk)
                length = _DATA_LEN.pack(data_len)
                crc = zlib.crc32(length, crc)
                f.write(length + _CRC.pack(crc))
                f.flush()
                os.fsync(f.fileno())
            failpoint("snapBeforeRename")
            os.rename(tmp, path)
            fsync_dir(self._dir)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            if exc.errno is None:  # the source of the chunks failed, not the disk
                raise
            raise disk_fault("saving the snapshot", path, exc) from exc
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        failpoint("snapAfterSave")
        log.info(
            "snap: saved %s index=%d term=%d bytes=%d",
            path,
            metadata.index,
            metadata.term,
            data_len,
        )
        self.purge()
        return path

    def purge(self) -> int:
        """Delete all but the newest ``keep`` snapshot files; returns how many went."""
        files = self.list()
        doomed = files[: max(0, len(files) - self._keep)]
        for s in doomed:
            os.unlink(s.path)
        if doomed:
            fsync_dir(self._dir)
            log.info(
                "snap: purged %d old snapshot(s) up to index %d", len(doomed), doomed[-1].index
            )
        return len(doomed)

    # ---------------------------------------------------------------- reading

    def verify(self, path: str | os.PathLike[str]) -> SnapshotMetadata:
        """Check a file's checksum and structure without keeping its data.

        Raises :class:`SnapshotCorruptError`.
        """
        meta, _ = self._read(os.fspath(path), keep_data=False)
        return meta

    def load(self, path: str | os.PathLike[str]) -> Snapshot:
        """Read and verify one snapshot file. Raises :class:`SnapshotCorruptError`."""
        meta, data = self._read(os.fspath(path), keep_data=True)
        return Snapshot(metadata=meta, data=data)

    def iter_data(
        self, path: str | os.PathLike[str], *, chunk_size: int = CHUNK_SIZE
    ) -> Iterator[bytes]:
        """Stream a snapshot's state bytes (call :meth:`verify` first: not re-checked)."""
        p = os.fspath(path)
        with open(p, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            start, data_len = self._layout(p, f.read(_HEADER.size), size)
            f.seek(start)
            left = data_len
            while left:
                chunk = f.read(min(chunk_size, left))
                if not chunk:
                    raise SnapshotCorruptError(p, "file shrank while reading")
                left -= len(chunk)
                yield chunk

    def newest(self, valid: Iterable[_IndexTerm] | None = None) -> SnapshotFile | None:
        """The newest snapshot file that verifies (and is in ``valid`` if given).

        ``valid`` is typically :func:`kvstore.storage.wal.valid_snapshot_markers`:
        only snapshots the WAL has a marker for can be continued by it. Corrupt
        candidates are reported and quarantined (renamed ``.broken``).
        """
        allowed = None if valid is None else {(v.index, v.term) for v in valid}
        for s in reversed(self.list()):
            if allowed is not None and (s.index, s.term) not in allowed:
                continue
            try:
                meta = self.verify(s.path)
            except SnapshotCorruptError as exc:
                self._quarantine(s.path, exc)
                continue
            if (meta.index, meta.term) != (s.index, s.term):
                self._quarantine(s.path, SnapshotCorruptError(s.path, "name/metadata mismatch"))
                continue
            return s
        return None

    def load_newest(self, valid: Iterable[_IndexTerm] | None = None) -> Snapshot | None:
        """Load the newest valid snapshot (see :meth:`newest`); ``None`` if there is none."""
        s = self.newest(valid)
        return None if s is None else self.load(s.path)

    def _quarantine(self, path: str, exc: SnapshotError) -> None:
        log.warning(
            "snap: skipping corrupt snapshot %s (%s); renaming to %s", path, exc, _BROKEN_SUFFIX
        )
        os.rename(path, path + _BROKEN_SUFFIX)
        fsync_dir(self._dir)

    @staticmethod
    def _layout(path: str, head: bytes, size: int) -> tuple[int, int]:
        """(data start offset, data length) from the header and file size."""
        if len(head) < _HEADER.size:
            raise SnapshotCorruptError(path, "truncated header")
        magic, version, meta_len = _HEADER.unpack(head)
        if magic != MAGIC:
            raise SnapshotCorruptError(path, "bad magic")
        if version != FORMAT_VERSION:
            raise SnapshotCorruptError(path, f"unsupported version {version}")
        start = _HEADER.size + meta_len
        data_len = size - start - _TRAILER.size
        if data_len < 0:
            raise SnapshotCorruptError(path, "truncated file")
        return start, data_len

    def _read(self, path: str, *, keep_data: bool) -> tuple[SnapshotMetadata, bytes]:
        try:
            f = open(path, "rb")  # noqa: SIM115 - closed below
        except FileNotFoundError:
            raise SnapshotError(f"snapshot {path} not found") from None
        with f:
            size = os.fstat(f.fileno()).st_size
            head = f.read(_HEADER.size)
            start, data_len = self._layout(path, head, size)
            meta_bytes = f.read(start - _HEADER.size)
            crc = zlib.crc32(meta_bytes, zlib.crc32(head))
            parts: list[bytes] = []
            left = data_len
            while left:
                chunk = f.read(min(CHUNK_SIZE, left))
                if not chunk:
                    raise SnapshotCorruptError(path, "file shrank while reading")
                crc = zlib.crc32(chunk, crc)
                if keep_data:
                    parts.append(chunk)
                left -= len(chunk)
            trailer = f.read(_TRAILER.size)
        if len(trailer) != _TRAILER.size:
            raise SnapshotCorruptError(path, "file shrank while reading")
        stored_len, stored_crc = _TRAILER.unpack(trailer)
        crc = zlib.crc32(trailer[: _DATA_LEN.size], crc)
        if stored_crc != crc:
            raise SnapshotCorruptError(path, "checksum mismatch")
        if stored_len != data_len:
            raise SnapshotCorruptError(path, "data length mismatch")
        try:
            meta = decode_metadata(meta_bytes)
        except ValueError as exc:
            raise SnapshotCorruptError(path, f"bad metadata: {exc}") from None
        return meta, b"".join(parts)

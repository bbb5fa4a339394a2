"""Segmented, checksummed write-ahead log for Raft entries and hard state.

Layout
======

A WAL is a directory of segment files named ``<seq:016x>-<first_index:016x>.wal``
(plus a ``LOCK`` file). ``seq`` counts segments from 0 without gaps;
``first_index`` is the index the next appended entry had when the segment was
cut (entries in a segment may still carry smaller indexes when Raft overwrites
an uncommitted suffix).

Every segment is a sequence of *frames*, each aligned to 8 bytes::

    u32 body_len | u32 crc | body (body_len bytes) | zero padding to 8

    crc  = zlib.crc32(body, body_len)   # the length seeds the checksum
    body = u8 record_type | type-specific payload (little endian)

Record types (payload after the type byte):

* ``SEGMENT`` (always and only the first frame of a segment)::

      8s magic | u16 version | u64 seq | u64 first_index | u32 prev_crc |
      u64 hs_term | u64 hs_vote | u64 hs_commit | metadata bytes

  ``prev_crc`` is the crc of the last frame of the previous segment, so a
  segment whose tail went missing is detected when the next one is read. The
  hard state in effect and the WAL metadata are repeated in every segment, so
  releasing old segments never loses them.
* ``ENTRY``: ``u64 term | u64 index | u8 entry_type | data``.
* ``HARDSTATE``: ``u64 term | u64 vote | u64 commit``.
* ``SNAPSHOT`` (marker): ``u64 index | u64 term``.

Checksums are per frame rather than chained across frames like etcd's. The
chain's job (noticing lost or reordered records) is done by explicit checks:
entry indexes must be contiguous (an index at or below the last one replaces
the suffix from there on), segment sequence numbers must be contiguous, and
``prev_crc`` links segments. Independent checksums buy the ability to resync
after a damaged frame, which is how recovery tells a torn tail (nothing valid
follows the damage: truncate with a warning) from corruption (a valid frame
follows: raise :class:`WALCorruptError` with file and offset) even when the
damage hit a length field. Padding bytes are checked to be zero as well.

The end of the written data is the first all-zero frame header: segments are
preallocated with ``posix_fallocate`` so the unwritten tail reads as zeros, and
a valid frame never has a zero header (``body_len >= 1``).

Durability protocol
===================

* :meth:`WAL.save` encodes a whole batch (entries, then hard state) into one
  buffer, writes it with one ``pwrite`` and, unless ``sync=False``, makes it
  durable with one ``fdatasync`` (group commit).
* A segment is cut (:meth:`WAL.cut`) once it reaches ``segment_size``: the old
  segment is fdatasync'ed and trimmed to its written length, the new one is
  built in a ``.tmp`` file (preallocate, header, fsync), renamed into place and
  the directory fsync'ed. Hence every non-final segment is complete, and any
  damage in it is corruption.
* :meth:`WAL.release_to` deletes segments wholly covered by a snapshot, oldest
  first, then fsyncs the directory, so a crash leaves a contiguous suffix; then
  frees their blocks a little at a time.

The WAL object is not thread-safe: one owner (the node's raft loop) drives it.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import logging
import os
import re
import struct
import time
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Final

from kvstore.failpoints import failpoint
from kvstore.raft.types import EMPTY_HARD_STATE, Entry, EntryType, HardState, SnapshotMetadata
from kvstore.storage.dirs import fsync_dir, make_dirs_durable
from kvstore.storage.errors import (
    WALClosedError,
    WALCorruptError,
    WALExistsError,
    WALFailedError,
    WALLockedError,
    WALMissingEntriesError,
    WALNotFoundError,
    WALSnapshotNotFoundError,
    disk_fault,
)

__all__ = [
    "DEFAULT_SEGMENT_SIZE",
    "WAL",
    "Record",
    "Recovered",
    "SegmentHeader",
    "SnapshotMarker",
    "iter_segment_records",
    "list_segments",
    "read_wal",
    "segment_name",
    "valid_snapshot_markers",
]

log = logging.getLogger(__name__)

DEFAULT_SEGMENT_SIZE: Final = 64 * 1024 * 1024
"""Segment rollover size in bytes (etcd's default)."""

RELEASE_STEP_BYTES: Final = 2 * 1024 * 1024
"""A released segment is unlinked, then shrunk this much at a time before it is closed.
Freeing a written 64 MiB segment at once made the next journal commit carry all its
extents: the appending fdatasync waited 8-13 ms on an idle disk and a put ~80 ms under
``check perf``; freed 2 MiB at a time, the slowest fdatasync beside it took ~1 ms.
(RocksDB's delete scheduler truncates files in chunks for the same reason.)"""

SLOW_SYNC_SECONDS: Final = 1.0
"""An fdatasync slower than this is logged as a warning."""

LOCK_FILE_NAME: Final = "LOCK"
_SEGMENT_SUFFIX: Final = ".wal"
_TMP_SUFFIX: Final = ".tmp"
_SEGMENT_RE: Final = re.compile(r"^([0-9a-f]{16})-([0-9a-f]{16})\.wal$")

MAGIC: Final = b"kvsWAL\x00\x00"
FORMAT_VERSION: Final = 1

REC_SEGMENT: Final = 1
REC_ENTRY: Final = 2
REC_HARDSTATE: Final = 3
REC_SNAPSHOT: Final = 4
_KNOWN_TYPES: Final = frozenset((REC_SEGMENT, REC_ENTRY, REC_HARDSTATE, REC_SNAPSHOT))

_ALIGN: Final = 8
_FRAME = struct.Struct("<II")  # body_len, crc
_ENTRY = struct.Struct("<BQQB")  # type, term, index, entry type
_HARDSTATE = struct.Struct("<BQQQ")  # type, term, vote, commit
_SNAPSHOT = struct.Struct("<BQQ")  # type, index, term
_SEGMENT = struct.Struct("<B8sHQQIQQQ")  # type, magic, version, seq, first, prev_crc, hs
_PADS: Final = tuple(bytes(n) for n in range(_ALIGN))
_ENTRY_TYPES: Final = {int(t): t for t in EntryType}
_ZERO_SCAN_BLOCK: Final = 64 * 1024
_ZERO_HEADER: Final = bytes(_FRAME.size)
_MAX_BODY: Final = 0xFFFFFFFF

_fdatasync = getattr(os, "fdatasync", os.fsync)


# --------------------------------------------------------------------------- records


@dataclass(slots=True, frozen=True)
class SnapshotMarker:
    """A WAL record saying "a snapshot at (index, term) was saved"."""

    index: int
    term: int


@dataclass(slots=True, frozen=True)
class SegmentHeader:
    """The decoded first record of a segment."""

    seq: int
    first_index: int
    prev_crc: int
    hard_state: HardState
    metadata: bytes


Record = Entry | HardState | SnapshotMarker | SegmentHeader
"""A decoded WAL record."""


def segment_name(seq: int, first_index: int) -> str:
    """File name of segment ``seq`` whose first expected entry is ``first_index``."""
    return f"{seq:016x}-{first_index:016x}{_SEGMENT_SUFFIX}"


def _pad_len(body_len: int) -> int:
    return -body_len & (_ALIGN - 1)  # the 8-byte frame header keeps the alignment


def _frame(body: bytes) -> tuple[bytes, int]:
    """Frame ``body`` (cold path helper); returns the frame and its crc."""
    n = len(body)
    crc = zlib.crc32(body, n)
    return _FRAME.pack(n, crc) + body + _PADS[_pad_len(n)], crc


def _encode_segment_header(h: SegmentHeader) -> bytes:
    hs = h.hard_state
    return (
        _SEGMENT.pack(
            REC_SEGMENT,
            MAGIC,
            FORMAT_VERSION,
            h.seq,
            h.first_index,
            h.prev_crc,
            hs.term,
            hs.vote,
            hs.commit,
        )
        + h.metadata
    )


def _decode_body(body: memoryview) -> Record:
    """Decode a checksum-valid body; raises ValueError if it is malformed."""
    rtype = body[0]
    n = len(body)
    if rtype == REC_ENTRY:
        if n < _ENTRY.size:
            raise ValueError("short entry record")
        _, term, index, etype = _ENTRY.unpack_from(body)
        et = _ENTRY_TYPES.get(etype)
        if et is None:
            raise ValueError(f"unknown entry type {etype}")
        return Entry(term, index, et, body[_ENTRY.size :].tobytes())
    if rtype == REC_HARDSTATE:
        if n != _HARDSTATE.size:
            raise ValueError("bad hard state record size")
        _, term, vote, commit = _HARDSTATE.unpack_from(body)
        return HardState(term, vote, commit)
    if rtype == REC_SNAPSHOT:
        if n != _SNAPSHOT.size:
            raise ValueError("bad snapshot marker size")
        _, index, term = _SNAPSHOT.unpack_from(body)
        return SnapshotMarker(index, term)
    if rtype == REC_SEGMENT:
        if n < _SEGMENT.size:
            raise ValueError("short segment header")
        _, magic, version, seq, first, prev_crc, t, v, c = _SEGMENT.unpack_from(body)
        if magic != MAGIC:
            raise ValueError("bad magic")
        if version != FORMAT_VERSION:
            raise ValueError(f"unsupported WAL format version {version}")
        meta = body[_SEGMENT.size :].tobytes()
        return SegmentHeader(seq, first, prev_crc, HardState(t, v, c), meta)
    raise ValueError(f"unknown record type {rtype}")


# --------------------------------------------------------------------------- scanning


@dataclass(slots=True)
class _ScanState:
    """Filled in by :func:`_scan` as it goes."""

    valid_end: int = 0  # offset where the next frame would be written
    last_crc: int = 0  # crc of the last valid frame
    torn_at: int | None = None  # start of a damaged tail (final segment only)


def _frame_ok(buf: bytes, mv: memoryview, pos: int) -> bool:
    """Whether a checksum-valid frame of a known type starts at ``pos``."""
    n = len(buf)
    if pos + _FRAME.size > n:
        return False
    blen, crc = _FRAME.unpack_from(buf, pos)
    end = pos + _FRAME.size + blen
    if blen == 0 or end > n:
        return False
    if buf[pos + _FRAME.size] not in _KNOWN_TYPES:
        return False
    return bool(zlib.crc32(mv[pos + _FRAME.size : end], blen) == crc)


def _next_nonzero(buf: bytes, pos: int) -> int | None:
    """Offset of the first non-zero byte at or after ``pos`` (None: all zeros).

    Block-wise ``bytes.count`` keeps this at memory speed over a 64 MiB
    preallocated tail (a regex or byte loop would take a large part of a second).
    """
    n = len(buf)
    while pos < n:
        end = min(pos + _ZERO_SCAN_BLOCK, n)
        if buf.count(0, pos, end) != end - pos:
            block = buf[pos:end]
            return pos + len(block) - len(block.lstrip(b"\x00"))
        pos = end
    return None


def _valid_frame_after(buf: bytes, mv: memoryview, start: int) -> int | None:
    """Offset of the first valid frame at an aligned offset >= ``start``, if any."""
    pos = (start + _ALIGN - 1) & ~(_ALIGN - 1)
    n = len(buf)
    while pos + _FRAME.size <= n:
        if buf[pos : pos + _FRAME.size] == _ZERO_HEADER:
            nz = _next_nonzero(buf, pos)
            if nz is None:
                return None
            pos = nz & ~(_ALIGN - 1)
            continue
        if _frame_ok(buf, mv, pos):
            return pos
        pos += _ALIGN
    return None


def _scan(buf: bytes, path: str, *, final: bool, state: _ScanState) -> Iterator[tuple[int, Record]]:
    """Yield ``(offset, record)`` for every valid frame of one segment's bytes.

    Stops at the end of the written data. A damaged frame followed by any valid
    frame, a damaged frame in a non-final segment, or a checksum-valid frame
    that does not decode raises :class:`WALCorruptError`. A damaged tail of the
    final segment is reported through ``state.torn_at``.
    """
    mv = memoryview(buf)
    n = len(buf)
    pos = 0
    frame_size = _FRAME.size
    unpack_frame = _FRAME.unpack_from
    unpack_entry = _ENTRY.unpack_from
    entry_size = _ENTRY.size
    entry_types = _ENTRY_TYPES
    crc32 = zlib.crc32
    while True:
        if pos + frame_size > n:
            if _next_nonzero(buf, pos) is not None:
                bad_at = pos
                break
            if pos == 0:
                raise WALCorruptError(path, 0, "empty segment file (no header)")
            return
        blen, crc = unpack_frame(buf, pos)
        if blen == 0 and crc == 0:
            if pos == 0:
                raise WALCorruptError(path, 0, "zero-filled segment header")
            if _next_nonzero(buf, pos) is None:
                return  # clean end: zero-filled (preallocated) tail
            bad_at = pos
            break
        body_start = pos + frame_size
        end = body_start + blen
        if end > n or crc32(mv[body_start:end], blen) != crc:
            bad_at = pos
            break
        padded = end + _pad_len(blen)
        if padded > end:
            pad_bytes = buf[end:padded]
            if pad_bytes != _PADS[len(pad_bytes)]:
                bad_at = pos
                break
        et = None
        if buf[body_start] == REC_ENTRY and blen >= entry_size and pos:
            # hot path: inline entry decoding (replay speed is restart time)
            _, term, index, etype = unpack_entry(buf, body_start)
            et = entry_types.get(etype)
        if et is not None:
            rec: Record = Entry(term, index, et, buf[body_start + entry_size : end])
        else:
            try:
                rec = _decode_body(mv[body_start:end])
            except ValueError as exc:
                raise WALCorruptError(path, pos, f"undecodable record: {exc}") from None
            if (pos == 0) != isinstance(rec, SegmentHeader):
                raise WALCorruptError(path, pos, "segment header missing or misplaced")
        state.valid_end = padded
        state.last_crc = crc
        yield pos, rec
        pos = padded
    # A damaged frame at bad_at.
    if bad_at == 0:
        raise WALCorruptError(path, 0, "damaged segment header")
    following = _valid_frame_after(buf, mv, bad_at + frame_size)
    if following is not None:
        raise WALCorruptError(
            path, bad_at, f"damaged record followed by a valid record at offset {following}"
        )
    if not final:
        raise WALCorruptError(path, bad_at, "damaged record at the end of a non-final segment")
    state.torn_at = bad_at


def iter_segment_records(path: str | os.PathLike[str]) -> Iterator[tuple[int, int, Record]]:
    """Yield ``(offset, end, record)`` for each valid record of one segment file.

    ``end`` is the offset just past the record's body (padding excluded). A
    damaged tail ends the iteration silently; damage followed by valid records
    raises :class:`WALCorruptError`. Meant for inspection tools and tests.
    """
    p = os.fspath(path)
    with open(p, "rb") as f:
        buf = f.read()
    state = _ScanState()
    for off, rec in _scan(buf, p, final=True, state=state):
        blen = _FRAME.unpack_from(buf, off)[0]
        yield off, off + _FRAME.size + blen, rec


# --------------------------------------------------------------------------- files


@dataclass(slots=True, frozen=True)
class _SegmentFile:
    seq: int
    first_index: int
    path: str


def list_segments(dirpath: str | os.PathLike[str]) -> list[tuple[int, int, str]]:
    """``(seq, first_index, path)`` of every segment file in ``dirpath``, by seq."""
    return [(s.seq, s.first_index, s.path) for s in _list_segment_files(os.fspath(dirpath))]


def _list_segment_files(dirpath: str) -> list[_SegmentFile]:
    out = []
    try:
        names = os.listdir(dirpath)
    except FileNotFoundError:
        return []
    for name in names:
        m = _SEGMENT_RE.match(name)
        if m:
            out.append(
                _SegmentFile(int(m.group(1), 16), int(m.group(2), 16), os.path.join(dirpath, name))
            )
    out.sort(key=lambda s: s.seq)
    return out


def _preallocate(fd: int, size: int) -> None:
    if size <= 0:
        return
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as exc:  # e.g. EOPNOTSUPP on exotic filesystems: just grow on write
        log.debug("wal: posix_fallocate unsupported (%s); not preallocating", exc)


def _free_gradually(fd: int) -> None:
    """Shrink an unlinked file to nothing, RELEASE_STEP_BYTES at a time (see there).

    It is out of the directory already: a crash part-way leaves no short segment, and the
    filesystem frees the orphan's rest.
    """
    size = os.fstat(fd).st_size
    while size > 0:
        size = max(0, size - RELEASE_STEP_BYTES)
        os.ftruncate(fd, size)


def _write_all(fd: int, data: bytes, offset: int) -> int:
    """pwrite ``data`` at ``offset`` completely; returns the new end offset."""
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        offset += n
        view = view[n:]
    return offset


def _create_segment(
    dirpath: str, header: SegmentHeader, prealloc: int
) -> tuple[int, str, int, int]:
    """Create a segment atomically; returns (fd, path, write offset, header crc)."""
    name = segment_name(header.seq, header.first_index)
    path = os.path.join(dirpath, name)
    tmp = path + _TMP_SUFFIX
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    try:
        _preallocate(fd, prealloc)
        frame, crc = _frame(_encode_segment_header(header))
        offset = _write_all(fd, frame, 0)
        os.fsync(fd)
        os.rename(tmp, path)
        fsync_dir(dirpath)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return fd, path, offset, crc


# --------------------------------------------------------------------------- replay


@dataclass(slots=True)
class Recovered:
    """What :meth:`WAL.open` / :func:`read_wal` recovered from disk."""

    metadata: bytes
    """The opaque metadata given to :meth:`WAL.create` (node id, cluster id)."""
    hard_state: HardState
    """The last hard state saved (``EMPTY_HARD_STATE`` if none)."""
    entries: list[Entry]
    """The log after the snapshot index, contiguous, last writes winning."""
    snapshot_markers: list[SnapshotMarker] = field(default_factory=list)
    """Every snapshot marker still in the WAL, in write order."""
    torn_bytes: int = 0
    """Bytes of damaged tail found in the final segment (truncated by open)."""


@dataclass(slots=True)
class _Replay:
    recovered: Recovered
    segments: list[_SegmentFile]
    last_index: int
    last_crc: int
    valid_end: int
    torn_at: int | None


def _replay(dirpath: str, snap: SnapshotMetadata | None, *, markers_only: bool = False) -> _Replay:
    segs = _list_segment_files(dirpath)
    if not segs:
        raise WALNotFoundError(f"no WAL segments in {dirpath}")
    for prev, cur in itertools.pairwise(segs):
        if cur.seq != prev.seq + 1:
            raise WALCorruptError(cur.path, 0, f"missing segment(s) after seq {prev.seq}")

    snap_index = snap.index if snap is not None else 0
    snap_term = snap.term if snap is not None else 0
    # markers_only: validate everything but collect no entries (any snapshot may be the start)
    start = (1 << 64) if markers_only else snap_index + 1
    entries: list[Entry] = []
    markers: list[SnapshotMarker] = []
    hard_state = EMPTY_HARD_STATE
    metadata = b""
    last_index = 0
    last_crc = 0
    snap_found = snap_index == 0
    state = _ScanState()

    for i, seg in enumerate(segs):
        final = i == len(segs) - 1
        with open(seg.path, "rb") as f:
            buf = f.read()
        state = _ScanState()
        for off, rec in _scan(buf, seg.path, final=final, state=state):
            if type(rec) is Entry:
                idx = rec.index
                if idx > last_index + 1:
                    raise WALCorruptError(
                        seg.path, off, f"entry index {idx} skips ahead of last index {last_index}"
                    )
                if idx >= start:
                    pos = idx - start
                    if pos > len(entries):
                        raise WALMissingEntriesError(
                            f"{dirpath}: entries {start}..{idx - 1} after snapshot index "
                            f"{snap_index} are not in the WAL (released or lost)"
                        )
                    del entries[pos:]
                    entries.append(rec)
                elif entries:
                    entries.clear()
                last_index = idx
            elif type(rec) is HardState:
                hard_state = rec
            elif type(rec) is SnapshotMarker:
                markers.append(rec)
                if rec.index == snap_index and rec.term == snap_term:
                    snap_found = True
                if rec.index > last_index:  # installed snapshot: the log restarts after it
                    if rec.index > snap_index and not markers_only:
                        raise WALMissingEntriesError(
                            f"{dirpath}: WAL installs snapshot {rec.index} (term {rec.term}) "
                            f"but recovery starts from older snapshot index {snap_index}"
                        )
                    entries.clear()
                    last_index = rec.index
            else:
                assert type(rec) is SegmentHeader
                if rec.seq != seg.seq or rec.first_index != seg.first_index:
                    raise WALCorruptError(seg.path, off, "segment header does not match file name")
                if i == 0:
                    metadata = rec.metadata
                    last_index = rec.first_index - 1
                    hard_state = rec.hard_state
                else:
                    if rec.metadata != metadata:
                        raise WALCorruptError(seg.path, off, "metadata differs from first segment")
                    if rec.prev_crc != last_crc:
                        raise WALCorruptError(
                            seg.path, off, "previous segment's last record is missing or altered"
                        )
                    if rec.first_index != last_index + 1:
                        raise WALCorruptError(
                            seg.path,
                            off,
                            f"segment starts at index {rec.first_index} but the previous "
                            f"segment ended at {last_index}",
                        )
                    hard_state = rec.hard_state
        last_crc = state.last_crc

    if not snap_found:
        raise WALSnapshotNotFoundError(
            f"{dirpath}: no snapshot marker for index {snap_index} term {snap_term}"
        )
    if last_index >= start and len(entries) != last_index - start + 1:
        raise WALMissingEntriesError(
            f"{dirpath}: WAL ends at index {last_index} but holds only {len(entries)} "
            f"entries after snapshot index {snap_index}"
        )
    torn_bytes = 0
    if state.torn_at is not None:
        torn_bytes = os.path.getsize(segs[-1].path) - state.torn_at
    rec_out = Recovered(metadata, hard_state, entries, markers, torn_bytes)
    return _Replay(rec_out, segs, last_index, last_crc, state.valid_end, state.torn_at)


def read_wal(
    dirpath: str | os.PathLike[str], from_snapshot: SnapshotMetadata | None = None
) -> Recovered:
    """Read a WAL without modifying it (no lock, no tail repair).

    Same validation and result as :meth:`WAL.open`; a damaged tail is ignored
    (and counted in ``torn_bytes``) instead of truncated.
    """
    return _replay(os.fspath(dirpath), from_snapshot).recovered


def valid_snapshot_markers(dirpath: str | os.PathLike[str]) -> list[SnapshotMarker]:
    """Snapshot markers a restart may start from, oldest first.

    Includes the implicit ``(0, 0)`` start and drops markers beyond the last
    saved commit index (a snapshot is only valid once its index is committed).
    Pass the result to :meth:`SnapshotStore.load_newest` to pick the newest
    snapshot file the WAL can continue from.
    """
    rec = _replay(os.fspath(dirpath), None, markers_only=True).recovered
    commit = rec.hard_state.commit
    out = [SnapshotMarker(0, 0)]
    out.extend(m for m in rec.snapshot_markers if m.index <= commit)
    return out


# --------------------------------------------------------------------------- the WAL


class WAL:
    """An open, appendable write-ahead log. Create with :meth:`create` or :meth:`open`."""

    def __init__(
        self,
        dirpath: str,
        *,
        lock_fd: int,
        fd: int,
        seq: int,
        offset: int,
        last_crc: int,
        last_index: int,
        hard_state: HardState,
        metadata: bytes,
        segment_size: int,
    ) -> None:
        """Internal: use :meth:`create` or :meth:`open`."""
        self._dir = dirpath
        self._lock_fd = lock_fd
        self._fd = fd
        self._seq = seq
        self._offset = offset
        self._last_crc = last_crc
        self._last_index = last_index
        self._hard_state = hard_state
        self._metadata = metadata
        self._segment_size = segment_size
        self._dirty = False
        self._closed = False
        self._failed: BaseException | None = None

    # ---------------------------------------------------------------- construction

    @staticmethod
    def exists(dirpath: str | os.PathLike[str]) -> bool:
        """Whether ``dirpath`` holds at least one WAL segment."""
        return bool(_list_segment_files(os.fspath(dirpath)))

    @staticmethod
    def _lock(dirpath: str) -> int:
        fd = os.open(
            os.path.join(dirpath, LOCK_FILE_NAME), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644
        )
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise WALLockedError(f"WAL directory {dirpath} is locked by another user") from None
        return fd

    @classmethod
    def create(
        cls,
        dirpath: str | os.PathLike[str],
        metadata: bytes = b"",
        *,
        segment_size: int = DEFAULT_SEGMENT_SIZE,
    ) -> WAL:
        """Create a new, empty WAL in ``dirpath`` (created if missing).

        ``metadata`` is opaque (the server stores node id and cluster id in it)
        and is returned by every later :meth:`open`. The first entry appended
        must have index 1, unless a snapshot marker is saved first.
        """
        d = os.fspath(dirpath)
        if segment_size <= 0:
            raise ValueError("segment_size must be positive")
        make_dirs_durable(d)
        lock_fd = cls._lock(d)
        try:
            if _list_segment_files(d):
                raise WALExistsError(f"a WAL already exists in {d}")
            header = SegmentHeader(0, 1, 0, EMPTY_HARD_STATE, bytes(metadata))
            fd, path, offset, crc = _create_segment(d, header, segment_size)
        except BaseException:
            os.close(lock_fd)
            raise
        log.info("wal: created %s", path)
        return cls(
            d,
            lock_fd=lock_fd,
            fd=fd,
            seq=0,
            offset=offset,
            last_crc=crc,
            last_index=0,
            hard_state=EMPTY_HARD_STATE,
            metadata=bytes(metadata),
            segment_size=segment_size,
        )

    @classmethod
    def open(
        cls,
        dirpath: str | os.PathLike[str],
        from_snapshot: SnapshotMetadata | None = None,
        *,
        segment_size: int = DEFAULT_SEGMENT_SIZE,
    ) -> tuple[WAL, Recovered]:
        """Open an existing WAL for appending and recover its contents.

        Reads and checks every segment. The returned :class:`Recovered` holds
        the metadata, the last hard state and the entries after
        ``from_snapshot.index`` (all entries when ``None``). When a snapshot is
        given, a marker for exactly that (index, term) must be in the WAL.

        A damaged tail of the final segment (torn write, zero-filled or garbage
        tail) is truncated with a warning. Damage anywhere else raises
        :class:`WALCorruptError`; missing segments or skipped indexes likewise.
        """
        d = os.fspath(dirpath)
        if segment_size <= 0:
            raise ValueError("segment_size must be positive")
        if not _list_segment_files(d):
            raise WALNotFoundError(f"no WAL segments in {d}")
        lock_fd = cls._lock(d)
        try:
            for name in os.listdir(d):
                if name.endswith(_SEGMENT_SUFFIX + _TMP_SUFFIX):
                    log.warning("wal: removing leftover temporary file %s", name)
                    os.unlink(os.path.join(d, name))
            rp = _replay(d, from_snapshot)
            last = rp.segments[-1]
            fd = os.open(last.path, os.O_WRONLY | os.O_CLOEXEC)
            try:
                if rp.torn_at is not None:
                    size = os.fstat(fd).st_size
                    log.warning(
                        "wal: truncating damaged tail of %s at offset %d (%d bytes dropped)",
                        last.path,
                        rp.torn_at,
                        size - rp.torn_at,
                    )
                    os.ftruncate(fd, rp.torn_at)
                    _preallocate(fd, segment_size)
                    os.fsync(fd)
            except BaseException:
                os.close(fd)
                raise
        except BaseException:
            os.close(lock_fd)
            raise
        rec = rp.recovered
        wal = cls(
            d,
            lock_fd=lock_fd,
            fd=fd,
            seq=last.seq,
            offset=rp.valid_end,
            last_crc=rp.last_crc,
            last_index=rp.last_index,
            hard_state=rec.hard_state,
            metadata=rec.metadata,
            segment_size=segment_size,
        )
        log.info(
            "wal: opened %s segments=%d last_index=%d entries=%d term=%d commit=%d",
            d,
            len(rp.segments),
            rp.last_index,
            len(rec.entries),
            rec.hard_state.term,
            rec.hard_state.commit,
        )
        return wal, rec

    # ---------------------------------------------------------------- properties

    @property
    def dir(self) -> str:
        """The WAL directory."""
        return self._dir

    @property
    def last_index(self) -> int:
        """Index of the last entry written (or of the last installed snapshot)."""
        return self._last_index

    @property
    def hard_state(self) -> HardState:
        """The last hard state written."""
        return self._hard_state

    @property
    def metadata(self) -> bytes:
        """The metadata given at creation."""
        return self._metadata

    @property
    def segment_seq(self) -> int:
        """Sequence number of the segment being appended to."""
        return self._seq

    @property
    def segment_offset(self) -> int:
        """Write offset in the current segment."""
        return self._offset

    @property
    def failed(self) -> bool:
        """Whether a write or sync failed: what is on disk is unknown from then on."""
        return self._failed is not None

    # ---------------------------------------------------------------- writing

    def _check(self) -> None:
        if self._closed:
            raise WALClosedError(f"WAL {self._dir} is closed")
        if self._failed is not None:
            raise WALFailedError(f"WAL {self._dir} failed earlier: {self._failed!r}")

    def _write(self, data: bytes) -> None:
        try:
            failpoint("walBeforeWrite")
            self._offset = _write_all(self._fd, data, self._offset)
            self._dirty = True
            failpoint("walAfterWrite")
        except OSError as exc:
            self._failed = exc
            raise disk_fault("writing the WAL segment", self._segment_path(), exc) from exc
        except BaseException as exc:
            self._failed = exc
            raise

    def _segment_path(self) -> str:
        return os.path.join(self._dir, f"{self._seq:016x}-*.wal")

    def save(
        self,
        hard_state: HardState | None,
        entries: Sequence[Entry],
        *,
        sync: bool = True,
    ) -> None:
        """Append ``entries`` then ``hard_state`` as one write, then fdatasync.

        ``entries`` must be contiguous and start at most one past
        :attr:`last_index`; starting at or below it replaces the log from that
        index on. ``hard_state`` is skipped when ``None`` or unchanged. With
        ``sync=False`` the batch is written but not yet durable: call
        :meth:`sync` before acknowledging anything. Rolls over to a new segment
        (which syncs) once the current one reaches ``segment_size``.
        """
        self._check()
        parts: list[bytes] = []
        append = parts.append
        crc = self._last_crc
        last_index = self._last_index
        if entries:
            first = entries[0].index
            if first > last_index + 1 or first < 1:
                raise ValueError(
                    f"entry index {first} would leave a gap after last index {last_index}"
                )
            expect = first
            pack_entry = _ENTRY.pack
            pack_frame = _FRAME.pack
            crc32 = zlib.crc32
            pads = _PADS
            entry_size = _ENTRY.size
            for e in entries:
                if e.index != expect:
                    raise ValueError(f"entries not contiguous: {e.index} follows {expect - 1}")
                expect += 1
                head = pack_entry(REC_ENTRY, e.term, e.index, e.type)
                data = e.data
                blen = entry_size + len(data)
                crc = crc32(data, crc32(head, blen))
                append(pack_frame(blen, crc))
                append(head)
                append(data)
                pad = -blen & 7
                if pad:
                    append(pads[pad])
            last_index = expect - 1
        write_hs = hard_state is not None and hard_state != self._hard_state
        if write_hs:
            assert hard_state is not None
            body = _HARDSTATE.pack(
                REC_HARDSTATE, hard_state.term, hard_state.vote, hard_state.commit
            )
            frame, crc = _frame(body)
            append(frame)
        if parts:
            self._write(b"".join(parts))
            self._last_crc = crc
            self._last_index = last_index
            if write_hs:
                assert hard_state is not None
                self._hard_state = hard_state
        if self._offset >= self._segment_size:
            self.cut()
        elif sync:
            self.sync()

    def save_snapshot(self, snapshot: SnapshotMetadata) -> None:
        """Record (and sync) a marker saying a snapshot at (index, term) exists.

        Save the snapshot file first, then the marker, then call
        :meth:`release_to`. A marker beyond :attr:`last_index` means the
        snapshot was installed from a leader: the log restarts after it.
        """
        self._check()
        frame, crc = _frame(_SNAPSHOT.pack(REC_SNAPSHOT, snapshot.index, snapshot.term))
        self._write(frame)
        self._last_crc = crc
        if snapshot.index > self._last_index:
            self._last_index = snapshot.index
        self.sync()

    def sync(self) -> None:
        """Make everything written so far durable (one fdatasync if anything is pending)."""
        self._check()
        if not self._dirty:
            return
        t0 = time.monotonic()
        try:
            if not failpoint("walFsync"):
                _fdatasync(self._fd)
            failpoint("walAfterFsync")
        except OSError as exc:
            self._failed = exc
            log.error("wal: fdatasync failed dir=%s seq=%d: %s", self._dir, self._seq, exc)
            raise disk_fault("fdatasync of the WAL", self._segment_path(), exc) from exc
        except BaseException as exc:
            self._failed = exc
            raise
        self._dirty = False
        took = time.monotonic() - t0
        if took > SLOW_SYNC_SECONDS:
            log.warning(
                "wal: slow fdatasync dir=%s seq=%d took=%.3fs last_index=%d",
                self._dir,
                self._seq,
                took,
                self._last_index,
            )

    def cut(self) -> None:
        """Finish the current segment and continue in a new one.

        Called automatically by :meth:`save` at ``segment_size``; callable by
        hand. The old segment is synced and trimmed to its written length
        before the new segment file appears.
        """
        self._check()
        failpoint("walBeforeCut")
        try:
            self._dirty = True  # the trim below must reach the disk either way
            _fdatasync(self._fd)
            os.ftruncate(self._fd, self._offset)
            os.fsync(self._fd)
            self._dirty = False
            header = SegmentHeader(
                self._seq + 1,
                self._last_index + 1,
                self._last_crc,
                self._hard_state,
                self._metadata,
            )
            fd, path, offset, crc = _create_segment(self._dir, header, self._segment_size)
        except OSError as exc:
            self._failed = exc
            raise disk_fault("cutting a new WAL segment in", self._dir, exc) from exc
        except BaseException as exc:
            self._failed = exc
            raise
        os.close(self._fd)
        self._fd = fd
        self._seq += 1
        self._offset = offset
        self._last_crc = crc
        log.info("wal: cut to new segment %s last_index=%d", path, self._last_index)
        failpoint("walAfterCut")

    def release_to(self, index: int) -> int:
        """Delete segments holding only entries at or below snapshot ``index``.

        Keeps the newest segment whose first index is <= ``index`` (it may
        hold ``index`` and later entries) and everything after it; never
        deletes the segment being written. ``index`` must be the index of a
        snapshot whose marker was saved. Returns the number of files removed.
        """
        self._check()
        segs = _list_segment_files(self._dir)
        keep = 0
        for i, s in enumerate(segs):
            if s.first_index <= index and s.seq <= self._seq:
                keep = i
        doomed = segs[:keep]
        unlinked: list[int] = []
        try:
            for s in doomed:  # oldest first: a crash leaves a contiguous suffix
                unlinked.append(os.open(s.path, os.O_WRONLY | os.O_CLOEXEC))
                os.unlink(s.path)
            if doomed:
                fsync_dir(self._dir)
            for fd in unlinked:
                _free_gradually(fd)
        except OSError as exc:
            self._failed = exc
            raise disk_fault("releasing WAL segments in", self._dir, exc) from exc
        finally:
            for fd in unlinked:
                os.close(fd)
        if doomed:
            log.info(
                "wal: released %d segment(s) up to seq %d for snapshot index %d",
                len(doomed),
                doomed[-1].seq,
                index,
            )
            failpoint("walAfterReleaseSegments")
        return len(doomed)

    def close(self) -> None:
        """Sync pending writes (unless failed), close files and release the lock."""
        if self._closed:
            return
        try:
            if self._failed is None and self._dirty:
                self.sync()
        finally:
            self._closed = True
            os.close(self._fd)
            os.close(self._lock_fd)

    def __enter__(self) -> WAL:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

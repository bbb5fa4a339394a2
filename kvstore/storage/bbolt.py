"""bbolt database files (etcd's backend format): a streaming writer and a checking reader.

Only what etcd's backups need: one level of buckets under the root, 4 KiB
pages, no persisted freelist (etcd runs bbolt with ``NoFreelistSync``, so its
files say "no freelist" and readers treat every unreachable page as free).

Layout (little-endian, no padding), as bbolt defines it:

* every page starts with a 16-byte header ``id u64, flags u16, count u16,
  overflow u32``; a page of ``n`` bytes occupies ``ceil(n / 4096)`` contiguous
  pages and says ``overflow = pages - 1``;
* pages 0 and 1 are meta pages: magic, version 2, page size, flags, the root
  bucket ``(root page, sequence)``, freelist page, high-water page id, txid and
  an FNV-1a 64 checksum of those fields; the valid one with the higher txid wins;
* leaf pages hold 16-byte elements ``flags, pos, ksize, vsize`` (u32 each) and
  branch pages ``pos, ksize, pgid`` (u32, u32, u64); ``pos`` counts from the
  element itself; a branch element's key is the first key of its child;
* a bucket is a leaf element with flag 1 whose value starts with
  ``root u64, sequence u64``; ``root == 0`` means the bucket's single leaf page
  follows inline in the value.

The reader checks what current bbolt checks (tx_check.go, page fastCheck,
meta validation): exact meta checksums, page ids, page types, each page
referenced once and below the high-water mark, and strictly ascending keys
that stay within their parent's key range.
"""

from __future__ import annotations

import mmap
import os
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

PAGE_SIZE = 4096
MAGIC = 0xED0CDAED
VERSION = 2
NO_FREELIST = 0xFFFF_FFFF_FFFF_FFFF

BRANCH_PAGE = 0x01
LEAF_PAGE = 0x02
META_PAGE = 0x04
FREELIST_PAGE = 0x10
BUCKET_LEAF_FLAG = 0x01

MAX_KEY_SIZE = 32768
MAX_VALUE_SIZE = (1 << 31) - 2
INLINE_LIMIT = PAGE_SIZE // 4
"""bbolt inlines a bucket whose single leaf is at most this big."""
_MAX_DEPTH = 64
"""Deeper B+trees do not occur (a 4 KiB fan-out of even 2 covers any file); deeper is corrupt."""

_PAGE_HEADER = struct.Struct("<QHHI")
_LEAF_ELEMENT = struct.Struct("<IIII")
_BRANCH_ELEMENT = struct.Struct("<IIQ")
_META = struct.Struct("<IIIIQQQQQ")  # magic .. txid: the checksummed fields
_BUCKET_HEADER = struct.Struct("<QQ")
_U64 = struct.Struct("<Q")
_HEADER_SIZE = _PAGE_HEADER.size
_ELEMENT_SIZE = 16
_META_OFFSET = _HEADER_SIZE

_FNV_OFFSET = 0xCBF29CE484222325
_FNV_PRIME = 0x100000001B3
_U64_MASK = (1 << 64) - 1


class BoltError(ValueError):
    """A file that is not a sound bbolt database; the message says what is wrong."""


def fnv1a64(data: bytes) -> int:
    """FNV-1a 64-bit hash (bbolt's meta checksum)."""
    h = _FNV_OFFSET
    for byte in data:
        h = ((h ^ byte) * _FNV_PRIME) & _U64_MASK
    return h


def _pages_for(nbytes: int) -> int:
    return max(1, -(-nbytes // PAGE_SIZE))


def _leaf_bytes(items: list[tuple[bytes, bytes, int]]) -> bytes:
    """Elements and data of a leaf page (without its header)."""
    count = len(items)
    elements = bytearray()
    data = bytearray()
    for i, (key, value, flags) in enumerate(items):
        pos = _ELEMENT_SIZE * (count - i) + len(data)
        elements += _LEAF_ELEMENT.pack(flags, pos, len(key), len(value))
        data += key
        data += value
    return bytes(elements + data)


def _branch_bytes(children: list[tuple[bytes, int]]) -> bytes:
    count = len(children)
    elements = bytearray()
    data = bytearray()
    for i, (key, pgid) in enumerate(children):
        pos = _ELEMENT_SIZE * (count - i) + len(data)
        elements += _BRANCH_ELEMENT.pack(pos, len(key), pgid)
        data += key
    return bytes(elements + data)


def _meta_page(page_id: int, root: int, high_water: int, txid: int) -> bytes:
    fields = _META.pack(MAGIC, VERSION, PAGE_SIZE, 0, root, 0, NO_FREELIST, high_water, txid)
    body = fields + _U64.pack(fnv1a64(fields))
    page = _PAGE_HEADER.pack(page_id, META_PAGE, 0, 0) + body
    return page + bytes(PAGE_SIZE - len(page))


class BoltWriter:
    """Write a bbolt file of top-level buckets, streaming: memory stays small.

    Buckets must come in ascending name order and each bucket's items in
    strictly ascending key order (both as bbolt compares: unsigned bytes).
    ``finish`` writes the root and the meta pages; the file is then exactly
    ``size`` bytes long, as bbolt's ``Tx.WriteTo`` would stream it.
    """

    def __init__(self, out: BinaryIO, txid: int = 2) -> None:
        if txid < 1:
            raise ValueError("txid must be at least 1 (meta page 1 gets txid - 1)")
        self._out = out
        self._start = out.tell()
        self._txid = txid
        self._next_page = 2
        self._buckets: list[tuple[bytes, bytes, int]] = []
        self._out.write(bytes(2 * PAGE_SIZE))  # the meta pages, written last
        self.size = 0

    def _write_page(self, flags: int, count: int, body: bytes) -> int:
        page_id = self._next_page
        pages = _pages_for(_HEADER_SIZE + len(body))
        header = _PAGE_HEADER.pack(page_id, flags, count, pages - 1)
        self._out.write(header)
        self._out.write(body)
        self._out.write(bytes(pages * PAGE_SIZE - _HEADER_SIZE - len(body)))
        self._next_page += pages
        return page_id

    def _tree(self, items: Iterable[tuple[bytes, bytes, int]], inline_ok: bool) -> bytes:
        """Write a B+tree of ``items``; returns the bucket value (header, maybe inline page)."""
        leaves: list[tuple[bytes, int]] = []  # (first key, page id)
        pending: list[tuple[bytes, bytes, int]] = []
        size = _HEADER_SIZE
        last: bytes | None = None
        for key, value, flags in items:
            if not key or len(key) > MAX_KEY_SIZE:
                raise ValueError(f"key of {len(key)} bytes (bbolt takes 1..{MAX_KEY_SIZE})")
            if len(value) > MAX_VALUE_SIZE:
                raise ValueError(f"value of {len(value)} bytes is too large for bbolt")
            if last is not None and key <= last:
                raise ValueError(f"keys out of order: {key[:64]!r} after {last[:64]!r}")
            last = key
            item_size = _ELEMENT_SIZE + len(key) + len(value)
            if pending and size + item_size > PAGE_SIZE:
                leaves.append((pending[0][0], self._write_leaf(pending)))
                pending, size = [], _HEADER_SIZE
            pending.append((key, value, flags))
            size += item_size
        if not leaves and inline_ok and size <= INLINE_LIMIT:
            inline = _PAGE_HEADER.pack(0, LEAF_PAGE, len(pending), 0) + _leaf_bytes(pending)
            return _BUCKET_HEADER.pack(0, 0) + inline
        if pending or not leaves:
            leaves.append((pending[0][0] if pending else b"", self._write_leaf(pending)))
        level = leaves
        while len(level) > 1:
            level = [(group[0][0], self._write_branch(group)) for group in _branch_groups(level)]
        return _BUCKET_HEADER.pack(level[0][1], 0)

    def _write_leaf(self, items: list[tuple[bytes, bytes, int]]) -> int:
        return self._write_page(LEAF_PAGE, len(items), _leaf_bytes(items))

    def _write_branch(self, children: list[tuple[bytes, int]]) -> int:
        return self._write_page(BRANCH_PAGE, len(children), _branch_bytes(children))

    def add_bucket(self, name: bytes, items: Iterable[tuple[bytes, bytes]]) -> None:
        """Write bucket ``name`` holding ``items`` (key, value), keys strictly ascending."""
        if self._buckets and name <= self._buckets[-1][0]:
            raise ValueError(f"bucket {name!r} out of order")
        value = self._tree(((k, v, 0) for k, v in items), inline_ok=True)
        self._buckets.append((name, value, BUCKET_LEAF_FLAG))

    def finish(self) -> int:
        """Write the root bucket and the meta pages; returns the file size."""
        root_value = self._tree(self._buckets, inline_ok=False)
        root = _BUCKET_HEADER.unpack_from(root_value)[0]
        high_water = self._next_page
        end = self._out.tell()
        self._out.seek(self._start)
        self._out.write(_meta_page(0, root, high_water, self._txid))
        self._out.write(_meta_page(1, root, high_water, self._txid - 1))
        self._out.seek(end)
        self.size = high_water * PAGE_SIZE
        assert end - self._start == self.size, (end - self._start, self.size)
        return self.size


def _branch_groups(children: list[tuple[bytes, int]]) -> list[list[tuple[bytes, int]]]:
    """Split one tree level into branch pages of at most a page each (at least 2 per page)."""
    groups: list[list[tuple[bytes, int]]] = [[]]
    size = _HEADER_SIZE
    for child in children:
        item_size = _ELEMENT_SIZE + len(child[0])
        if len(groups[-1]) >= 2 and size + item_size > PAGE_SIZE:
            groups.append([])
            size = _HEADER_SIZE
        groups[-1].append(child)
        size += item_size
    if len(groups) > 1 and len(groups[-1]) == 1:
        groups[-1].insert(0, groups[-2].pop())
    return groups


# ----------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class Meta:
    page_size: int
    root: int
    freelist: int
    high_water: int
    txid: int


def _meta_at(data: bytes | mmap.mmap, offset: int) -> tuple[Meta | None, str]:
    """The meta at ``offset`` if valid, else None and why not."""
    if len(data) < offset + _META_OFFSET + _META.size + 8:
        return None, "file too short for a meta page"
    magic, version, page_size, _, root, _, freelist, high_water, txid = _META.unpack_from(
        data, offset + _META_OFFSET
    )
    if magic != MAGIC:
        return None, "not a bbolt database (bad magic)"
    if version != VERSION:
        return None, f"bbolt version {version}, expected {VERSION}"
    fields = bytes(data[offset + _META_OFFSET : offset + _META_OFFSET + _META.size])
    (checksum,) = _U64.unpack_from(data, offset + _META_OFFSET + _META.size)
    if checksum != fnv1a64(fields):
        return None, "meta page checksum mismatch"
    return Meta(page_size, root, freelist, high_water, txid), ""


class BoltReader:
    """A read-only bbolt file; ``check()`` validates it as current bbolt's ``Tx.Check`` does.

    Bytes past the high-water mark (etcd's SHA-256 trailer, preallocated
    space) are ignored. Use as a context manager.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._file = open(self.path, "rb")  # noqa: SIM115 (closed by close())
        try:
            size = os.fstat(self._file.fileno()).st_size
            if size < 2 * 1024:
                raise BoltError(f"file too small for a bbolt database ({size} bytes)")
            self._data: bytes | mmap.mmap = mmap.mmap(
                self._file.fileno(), 0, access=mmap.ACCESS_READ
            )
            self.meta = self._pick_meta()
            self.page_size = self.meta.page_size
            if self.meta.high_water < 2:
                raise BoltError(f"high-water mark {self.meta.high_water} below the meta pages")
            if len(self._data) < self.meta.high_water * self.page_size:
                raise BoltError(
                    f"truncated: {len(self._data)} bytes, the database needs "
                    f"{self.meta.high_water * self.page_size}"
                )
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        data = getattr(self, "_data", None)
        if isinstance(data, mmap.mmap):
            data.close()
        self._file.close()

    def __enter__(self) -> BoltReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _pick_meta(self) -> Meta:
        first, why_first = _meta_at(self._data, 0)
        # With meta 0 unreadable, bbolt probes for meta 1 at 1 KiB .. 64 KiB.
        candidates = [1024 << i for i in range(7)] if first is None else [first.page_size]
        second: Meta | None = None
        why_second = "file too short for a meta page"
        for offset in candidates:
            second, why_second = _meta_at(self._data, offset)
            if second is not None:
                break
        valid = [m for m in (first, second) if m is not None]
        if not valid:
            raise BoltError(f"invalid database: meta 0: {why_first}; meta 1: {why_second}")
        best = max(valid, key=lambda m: m.txid)
        if best.page_size < 1024 or best.page_size & (best.page_size - 1):
            raise BoltError(f"invalid page size {best.page_size}")
        return best

    # ----- pages

    def _page(self, page_id: int) -> tuple[int, int, int, int]:
        """(offset, flags, count, overflow) of page ``page_id``, its header checked."""
        if page_id >= self.meta.high_water:
            raise BoltError(f"page {page_id} is past the high-water mark {self.meta.high_water}")
        offset = page_id * self.page_size
        pid, flags, count, overflow = _PAGE_HEADER.unpack_from(self._data, offset)
        if pid != page_id:
            raise BoltError(f"page {page_id} identifies itself as page {pid}")
        if flags not in (BRANCH_PAGE, LEAF_PAGE, META_PAGE, FREELIST_PAGE):
            raise BoltError(f"page {page_id} has invalid flags {flags:#x}")
        if page_id + overflow >= self.meta.high_water:
            raise BoltError(f"page {page_id} overflows past the high-water mark")
        return offset, flags, count, overflow

    def _elements(
        self, buf: bytes | mmap.mmap, base: int, end: int, flags: int, count: int, where: str
    ) -> list[tuple[int, bytes, bytes | int]]:
        """(leaf flags or 0, key, value or child page id) of a node's elements."""
        out: list[tuple[int, bytes, bytes | int]] = []
        if base + _HEADER_SIZE + _ELEMENT_SIZE * count > end:
            raise BoltError(f"{where}: {count} elements do not fit in the page")
        for i in range(count):
            at = base + _HEADER_SIZE + _ELEMENT_SIZE * i
            if flags == LEAF_PAGE:
                eflags, pos, ksize, vsize = _LEAF_ELEMENT.unpack_from(buf, at)
                start = at + pos
                if eflags & ~BUCKET_LEAF_FLAG or start + ksize + vsize > end:
                    raise BoltError(f"{where}: element {i} is malformed")
                key = bytes(buf[start : start + ksize])
                out.append((eflags, key, bytes(buf[start + ksize : start + ksize + vsize])))
            else:
                pos, ksize, child = _BRANCH_ELEMENT.unpack_from(buf, at)
                start = at + pos
                if start + ksize > end:
                    raise BoltError(f"{where}: element {i} is malformed")
                out.append((0, bytes(buf[start : start + ksize]), child))
        return out

    def _walk(
        self,
        page_id: int,
        low: bytes | None,
        high: bytes | None,
        reachable: set[int],
        depth: int = 0,
    ) -> Iterator[tuple[int, bytes, bytes]]:
        """Leaf elements of the tree at ``page_id`` in order; checks pages and key ranges."""
        if depth > _MAX_DEPTH:
            raise BoltError(f"page {page_id}: tree deeper than {_MAX_DEPTH} levels")
        offset, flags, count, overflow = self._page(page_id)
        for p in range(page_id, page_id + overflow + 1):
            if p in reachable:
                raise BoltError(f"page {p}: multiple references")
            reachable.add(p)
        if flags not in (BRANCH_PAGE, LEAF_PAGE):
            raise BoltError(f"page {page_id}: {flags:#x} where a branch or leaf page belongs")
        end = offset + (overflow + 1) * self.page_size
        where = f"page {page_id}"
        elements = self._elements(self._data, offset, end, flags, count, where)
        _check_order([e[1] for e in elements], low, high, where)
        for i, (eflags, key, value) in enumerate(elements):
            if flags == LEAF_PAGE:
                assert isinstance(value, bytes)
                yield eflags, key, value
            else:
                assert isinstance(value, int)
                child_high = elements[i + 1][1] if i + 1 < len(elements) else high
                yield from self._walk(value, key, child_high, reachable, depth + 1)

    def _bucket_items(
        self, name: bytes, value: bytes, reachable: set[int]
    ) -> Iterator[tuple[int, bytes, bytes]]:
        if len(value) < _BUCKET_HEADER.size:
            raise BoltError(f"bucket {name!r}: value too short for a bucket header")
        root, _ = _BUCKET_HEADER.unpack_from(value)
        if root != 0:
            yield from self._walk(root, None, None, reachable)
            return
        page = value[_BUCKET_HEADER.size :]
        if len(page) < _HEADER_SIZE:
            raise BoltError(f"bucket {name!r}: inline page too short")
        _, flags, count, _ = _PAGE_HEADER.unpack_from(page)
        if flags != LEAF_PAGE:
            raise BoltError(f"bucket {name!r}: inline page is not a leaf")
        elements = self._elements(page, 0, len(page), flags, count, f"bucket {name!r}")
        _check_order([e[1] for e in elements], None, None, f"bucket {name!r}")
        for eflags, key, v in elements:
            assert isinstance(v, bytes)
            yield eflags, key, v

    def buckets(self) -> list[tuple[bytes, bytes]]:
        """(name, bucket value) of every top-level bucket, in order."""
        out = []
        for flags, key, value in self._walk(self.meta.root, None, None, set()):
            if not flags & BUCKET_LEAF_FLAG:
                raise BoltError(f"top-level key {key!r} is not a bucket")
            out.append((key, value))
        return out

    def items(self, name: bytes) -> Iterator[tuple[bytes, bytes]]:
        """(key, value) pairs of top-level bucket ``name`` (none if it is absent)."""
        for bucket, value in self.buckets():
            if bucket == name:
                for flags, key, v in self._bucket_items(name, value, set()):
                    if flags & BUCKET_LEAF_FLAG:
                        raise BoltError(f"bucket {name!r}: nested bucket {key!r} not supported")
                    yield key, v
                return

    def check(self) -> None:
        """Raise BoltError unless every page is reachable once or free and every key in order."""
        reachable: set[int] = {0, 1}
        freelist = self.meta.freelist
        freed: set[int] = set()
        if freelist != NO_FREELIST:
            offset, flags, count, overflow = self._page(freelist)
            if flags != FREELIST_PAGE:
                raise BoltError(f"freelist page {freelist} has flags {flags:#x}")
            reachable.update(range(freelist, freelist + overflow + 1))
            ids_at, n = offset + _HEADER_SIZE, count
            if count == 0xFFFF:
                (n,) = _U64.unpack_from(self._data, ids_at)
                ids_at += 8
            if ids_at + 8 * n > offset + (overflow + 1) * self.page_size:
                raise BoltError(f"freelist page {freelist}: {n} ids do not fit")
            for i in range(n):
                (page_id,) = _U64.unpack_from(self._data, ids_at + 8 * i)
                if page_id in freed:
                    raise BoltError(f"page {page_id}: already freed")
                freed.add(page_id)
        for flags, key, value in self._walk(self.meta.root, None, None, reachable):
            if flags & BUCKET_LEAF_FLAG:
                for inner_flags, inner_key, _ in self._bucket_items(key, value, reachable):
                    if inner_flags & BUCKET_LEAF_FLAG:
                        raise BoltError(f"bucket {key!r}: nested bucket {inner_key!r}")
        if freed & reachable:
            raise BoltError(f"page {min(freed & reachable)}: reachable freed")
        if freelist != NO_FREELIST:
            for page_id in range(self.meta.high_water):
                if page_id not in reachable and page_id not in freed:
                    raise BoltError(f"page {page_id}: unreachable unfreed")


def _check_order(keys: list[bytes], low: bytes | None, high: bytes | None, where: str) -> None:
    previous = low
    for i, key in enumerate(keys):
        if previous is not None and (key < previous or (i > 0 and key == previous)):
            raise BoltError(f"{where}: key {i} out of order")
        if high is not None and key >= high:
            raise BoltError(f"{where}: key {i} beyond its parent's range")
        previous = key

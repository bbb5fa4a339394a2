"""Revision keys of the key bucket, laid out as etcd lays them out.

A key is 8-byte big-endian main revision, ``_``, 8-byte big-endian sub
revision (17 bytes), plus a trailing ``t`` for a tombstone (18 bytes). Big
endian makes LMDB's byte order the revision order, so a cursor walks history.
"""

from __future__ import annotations

import struct

REV_KEY_LEN = 17
TOMBSTONE_KEY_LEN = 18
_LAYOUT = struct.Struct(">QcQ")

Revision = tuple[int, int]
"""(main, sub): main is the store revision of a write txn, sub orders writes inside it."""


def rev_key(main: int, sub: int, tombstone: bool = False) -> bytes:
    """Encode a revision (and tombstone mark) as a key-bucket key."""
    key = _LAYOUT.pack(main, b"_", sub)
    return key + b"t" if tombstone else key


def rev_of(key: bytes) -> Revision:
    """Decode the revision of a key-bucket key."""
    main, _, sub = _LAYOUT.unpack_from(key)
    return (main, sub)


def is_tombstone(key: bytes) -> bool:
    """True when the key-bucket key marks a deletion."""
    return len(key) == TOMBSTONE_KEY_LEN and key[-1:] == b"t"

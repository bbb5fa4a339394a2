"""Key ranges of permissions: a role grants READ, WRITE or READWRITE on a key, a range or a prefix.

A user's permissions are the union of its roles' grants. As in etcd, a
permission on ``key`` alone covers exactly that key, ``[key, range_end)`` a
range, and ``range_end == b"\\x00"`` everything from ``key`` on; a request over
a range is allowed only when the union covers the whole range (a point
request: when some grant contains the key). Unions are kept merged and
sorted, so a check is a binary search.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from dataclasses import dataclass

from kvstore._pb.authpb import auth_pb2

OPEN_END = b"\x00"
"""A range end meaning "to the end of the key space" (etcd's rule for ranges)."""

READ = auth_pb2.Permission.READ
WRITE = auth_pb2.Permission.WRITE
READWRITE = auth_pb2.Permission.READWRITE

Interval = tuple[bytes, bytes | None]
"""[start, end) with None for an open end."""


def interval_of(key: bytes, range_end: bytes) -> Interval:
    """The keys a grant or a request names: one key, a range, or everything from ``key``."""
    if not range_end:
        return key, key + b"\x00"
    if range_end == OPEN_END:
        return key, None
    return key, range_end


def is_valid_grant(key: bytes, range_end: bytes) -> bool:
    """etcd's rule: a key, and either no end, an end past the key, or the open end."""
    if not key:
        return False
    return not range_end or range_end == OPEN_END or key < range_end


def _ends_before(end: bytes | None, point: bytes) -> bool:
    return end is not None and end < point


class KeySet:
    """A union of intervals, merged: sorted, disjoint and not touching."""

    __slots__ = ("_ends", "_starts")

    def __init__(self, intervals: Iterable[Interval] = ()) -> None:
        starts: list[bytes] = []
        ends: list[bytes | None] = []
        for start, end in sorted(intervals, key=lambda iv: iv[0]):
            if end is not None and end <= start:
                continue
            if starts and not _ends_before(ends[-1], start):
                last = ends[-1]
                if last is not None and (end is None or end > last):
                    ends[-1] = end
                continue
            starts.append(start)
            ends.append(end)
        self._starts = starts
        self._ends = ends

    def __bool__(self) -> bool:
        return bool(self._starts)

    def covers(self, key: bytes, range_end: bytes = b"") -> bool:
        """Whether every key of the request (``key``; ``[key, range_end)``) is in the set."""
        i = bisect.bisect_right(self._starts, key) - 1
        if i < 0:
            return False
        end = self._ends[i]
        if end is not None and end <= key:
            return False
        if not range_end:
            return True
        if range_end == OPEN_END:
            return end is None
        if range_end <= key:
            return True  # an empty range: judged by its first key, checked above
        return end is None or end >= range_end


@dataclass(frozen=True, slots=True)
class UserPermissions:
    """What one user may read and write: the merged grants of its roles."""

    read: KeySet
    write: KeySet

    @staticmethod
    def of(roles: Iterable[auth_pb2.Role]) -> UserPermissions:
        read: list[Interval] = []
        write: list[Interval] = []
        for role in roles:
            for perm in role.keyPermission:
                interval = interval_of(perm.key, perm.range_end)
                if perm.permType in (READ, READWRITE):
                    read.append(interval)
                if perm.permType in (WRITE, READWRITE):
                    write.append(interval)
        return UserPermissions(KeySet(read), KeySet(write))

"""In-memory key index: key -> generations of revisions (etcd's keyIndex/treeIndex).

A generation is one life of a key, from its creation to its deletion
(tombstone). The index answers "which revision of key K was visible at
revision R" without touching the backend, and what compaction may drop.
It is rebuilt from the backend on open.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import islice

from sortedcontainers import SortedDict, SortedList

from kvstore.mvcc.revision import Revision


@dataclass(slots=True)
class Generation:
    """One life of a key. ``ver`` is the version of its latest revision."""

    created: Revision
    ver: int
    revs: list[Revision] = field(default_factory=list)

    def is_empty(self) -> bool:
        return not self.revs


_NEVER = 1 << 64
"""Sorts after every revision: where an empty (current, deleted) generation begins."""


def _first_main(g: Generation) -> int:
    return g.revs[0][0] if g.revs else _NEVER


def _main(rev: Revision) -> int:
    return rev[0]


class KeyIndex:
    """The revision history of one key.

    The last generation is the current life; it is empty when the key is
    deleted. Every generation but the last ends with its tombstone.
    """

    __slots__ = ("generations", "key", "modified")

    def __init__(self, key: bytes) -> None:
        self.key = key
        self.modified: Revision = (0, 0)
        self.generations: list[Generation] = [Generation((0, 0), 0)]

    def put(self, rev: Revision) -> None:
        """Record a put at ``rev`` (which must be newer than anything seen)."""
        assert rev > self.modified, (self.key, rev, self.modified)
        g = self.generations[-1]
        if g.is_empty():
            g.created = rev
        g.revs.append(rev)
        g.ver += 1
        self.modified = rev

    def restore(self, created: Revision, rev: Revision, ver: int) -> None:
        """Start the history of a key read back from the backend (etcd's keyIndex.restore)."""
        assert self.generations[-1].is_empty() and len(self.generations) == 1
        self.generations[-1] = Generation(created, ver, [rev])
        self.modified = rev

    def tombstone(self, rev: Revision) -> None:
        """Record a deletion at ``rev``; the key must be live."""
        assert not self.generations[-1].is_empty(), self.key
        self.put(rev)
        self.generations.append(Generation((0, 0), 0))

    def is_empty(self) -> bool:
        return len(self.generations) == 1 and self.generations[0].is_empty()

    def _find_generation(self, at_rev: int) -> Generation | None:
        """The generation the key was in at ``at_rev`` (None: it did not exist then).

        Generations follow each other in revision order and only the last may be
        empty, so a binary search finds the last one begun by ``at_rev``: a key with
        a long history (a hot key, deleted and put again) is looked up in log time.
        """
        gens = self.generations
        last = len(gens) - 1
        i = bisect_right(gens, at_rev, key=_first_main) - 1
        if i < 0:
            return None
        g = gens[i]
        # A generation that is not the last ends with its tombstone: if that is at or
        # before at_rev, the key did not exist at at_rev.
        if i != last and g.revs[-1][0] <= at_rev:
            return None
        return g

    def get(self, at_rev: int) -> tuple[Revision, Revision, int] | None:
        """(modified, created, version) of the key as of ``at_rev``, or None if absent."""
        g = self._find_generation(at_rev)
        if g is None:
            return None
        revs = g.revs
        j = bisect_right(revs, at_rev, key=_main) - 1
        if j < 0:
            return None
        return revs[j], g.created, g.ver - (len(revs) - 1 - j)

    def latest(self) -> Generation | None:
        """The live generation, or None when the key is currently deleted."""
        g = self.generations[-1]
        return None if g.is_empty() else g

    def since(self, rev: int) -> list[Revision]:
        """Revisions with main >= ``rev``, one per main revision (the last sub wins)."""
        out: list[Revision] = []
        last_main = -1
        for g in self.generations:
            for r in g.revs:
                if r[0] < rev:
                    continue
                if r[0] == last_main:
                    out[-1] = r
                else:
                    out.append(r)
                    last_main = r[0]
        return out

    def _do_compact(self, at_rev: int, available: set[Revision]) -> tuple[int, int]:
        gens = self.generations
        gi = 0
        # Skip generations that ended (tombstone) at or before at_rev.
        while gi < len(gens) - 1 and gens[gi].revs[-1][0] <= at_rev:
            gi += 1
        revs = gens[gi].revs
        ri = -1
        for j in range(len(revs) - 1, -1, -1):
            if revs[j][0] <= at_rev:
                available.add(revs[j])
                ri = j
                break
        return gi, ri

    def compact(self, at_rev: int, available: set[Revision]) -> None:
        """Drop history older than ``at_rev``; add the revision to keep to ``available``."""
        assert not self.is_empty(), self.key
        gi, ri = self._do_compact(at_rev, available)
        g = self.generations[gi]
        if not g.is_empty():
            if ri != -1:
                g.revs = g.revs[ri:]
            # A generation left with only its tombstone is dead history.
            if len(g.revs) == 1 and gi != len(self.generations) - 1:
                available.discard(g.revs[0])
                gi += 1
        self.generations = self.generations[gi:]

    def keep(self, at_rev: int, available: set[Revision]) -> None:
        """Like compact, but only report which revision survives (for hashing)."""
        if self.is_empty():
            return
        gi, ri = self._do_compact(at_rev, available)
        g = self.generations[gi]
        if not g.is_empty() and ri == len(g.revs) - 1 and gi != len(self.generations) - 1:
            available.discard(g.revs[ri])


LIVE_CHUNK_KEYS = 256
"""Keys taken from the live set at a time: the caller may delete those it was given
before asking for more (a DeleteRange applied in slices)."""


class TreeIndex:
    """Sorted map of key -> KeyIndex, and the sorted set of keys live at the newest
    revision recorded.

    Until a compaction, deleted keys stay in the map with their history; a read of the
    current state walks only the live set (a prefix whose keys were all deleted is read
    at once, however many there were, and a count is two binary searches).
    """

    def __init__(self) -> None:
        self._keys: SortedDict = SortedDict()
        self._live: SortedList | None = SortedList()
        """None after a restore, until ``_live_keys`` rebuilds it."""
        self._newest = 0
        """Main revision of the newest put or tombstone recorded."""

    def __len__(self) -> int:
        return len(self._keys)

    def key_index(self, key: bytes) -> KeyIndex | None:
        ki: KeyIndex | None = self._keys.get(key)
        return ki

    def put(self, key: bytes, rev: Revision) -> None:
        ki = self._keys.get(key)
        if ki is None:
            ki = KeyIndex(key)
            self._keys[key] = ki
        if self._live is not None and ki.latest() is None:
            self._live.add(key)
        ki.put(rev)
        self._newest = rev[0]

    def restore(self, key: bytes, created: Revision, rev: Revision, ver: int) -> None:
        """Rebuilding from the backend, in revision order (the live set is built after)."""
        self._live = None
        ki = self._keys.get(key)
        if ki is None:
            ki = KeyIndex(key)
            ki.restore(created, rev, ver)
            self._keys[key] = ki
        else:
            ki.put(rev)
        self._newest = max(self._newest, rev[0])

    def tombstone(self, key: bytes, rev: Revision) -> None:
        ki = self._keys.get(key)
        assert ki is not None, key
        ki.tombstone(rev)
        if self._live is not None:
            self._live.remove(key)
        self._newest = max(self._newest, rev[0])

    def finish_restore(self) -> None:
        """Build the live set now that the rebuild is done (else the first read would)."""
        self._live_keys()

    def _live_keys(self) -> SortedList:
        live = self._live
        if live is None:
            live = self._live = SortedList(
                k for k, ki in self._keys.items() if ki.latest() is not None
            )
        return live

    def _candidates(self, key: bytes, end: bytes | None) -> Iterator[KeyIndex]:
        if end is None:
            ki = self._keys.get(key)
            if ki is not None:
                yield ki
            return
        keys = self._keys
        if end == b"":
            it = keys.irange(minimum=key)
        else:
            if end <= key:
                return
            it = keys.irange(key, end, inclusive=(True, False))
        for k in it:
            yield keys[k]

    def _live_range(self, key: bytes, end: bytes) -> Iterator[tuple[bytes, Revision]]:
        """The live set's keys in [key, end), a chunk at a time (see LIVE_CHUNK_KEYS)."""
        live, keys = self._live_keys(), self._keys
        maximum = end or None
        low, inclusive = key, True
        while chunk := list(
            islice(live.irange(low, maximum, inclusive=(inclusive, False)), LIVE_CHUNK_KEYS)
        ):
            for k in chunk:
                yield k, keys[k].modified
            low, inclusive = chunk[-1], False

    def range(self, key: bytes, end: bytes | None, at_rev: int) -> Iterator[tuple[bytes, Revision]]:
        """(key, modified revision) of each key in [key, end) live at ``at_rev``, in key order.

        ``end`` None means the single key, ``b""`` means every key >= ``key``.
        """
        if end is not None and at_rev >= self._newest:
            if end and end <= key:
                return iter(())
            return self._live_range(key, end)
        return self._range_at(key, end, at_rev)

    def _range_at(
        self, key: bytes, end: bytes | None, at_rev: int
    ) -> Iterator[tuple[bytes, Revision]]:
        for ki in self._candidates(key, end):
            got = ki.get(at_rev)
            if got is not None:
                yield ki.key, got[0]

    def count(self, key: bytes, end: bytes | None, at_rev: int) -> int:
        """How many keys ``range`` yields."""
        if end is not None and at_rev >= self._newest:
            if end and end <= key:
                return 0
            live = self._live_keys()
            below_end: int = live.bisect_left(end) if end else len(live)
            below_key: int = live.bisect_left(key)
            return below_end - below_key
        return sum(1 for _ in self._range_at(key, end, at_rev))

    def watch_candidates(self, key: bytes, end: bytes | None) -> Iterator[KeyIndex]:
        """Key indexes in the range, whatever their liveness."""
        return self._candidates(key, end)

    def compact(self, at_rev: int) -> set[Revision]:
        """Compact every key at ``at_rev``; returns the revisions the backend must keep."""
        available: set[Revision] = set()
        empty: list[bytes] = []
        for k, ki in self._keys.items():
            ki.compact(at_rev, available)
            if ki.is_empty():
                empty.append(k)
        for k in empty:
            del self._keys[k]
        return available

    def keep(self, at_rev: int) -> set[Revision]:
        """Revisions at or before ``at_rev`` that a compaction at ``at_rev`` would keep."""
        available: set[Revision] = set()
        for ki in self._keys.values():
            ki.keep(at_rev, available)
        return available

"""The in-memory Raft log owned by the core.

Layout: ``entries[0].index == offset + 1``; ``offset``/``offset_term`` describe the
last compacted entry (the snapshot point, or 0/0 for an empty log). ``stabled`` is
the last index the driver has confirmed persisted; everything after it is handed
out in the next Ready. ``snapshot`` is the newest snapshot known (sent to lagging
followers); ``snapshot_unstable`` is set when it came from the leader and the
driver still has to persist and apply it.
"""

from __future__ import annotations

from collections.abc import Sequence

from kvstore.raft.types import Entry, Snapshot

__all__ = ["RaftLog"]


class RaftLog:
    __slots__ = (
        "applied",
        "committed",
        "entries",
        "offset",
        "offset_term",
        "restores",
        "snapshot",
        "snapshot_unstable",
        "stabled",
    )

    def __init__(self, snapshot: Snapshot, entries: list[Entry], committed: int) -> None:
        meta = snapshot.metadata
        self.snapshot = snapshot
        self.snapshot_unstable = False
        self.restores = 0  # bumped whenever a received snapshot replaces the log
        self.offset = meta.index
        self.offset_term = meta.term
        self.entries = [e for e in entries if e.index > meta.index]
        for i, e in enumerate(self.entries):
            assert e.index == self.offset + 1 + i, "stored entries must be contiguous"
        self.stabled = self.last_index()
        assert meta.index <= committed <= self.last_index(), "commit index out of range"
        self.committed = committed
        self.applied = meta.index

    # ---- queries -------------------------------------------------------------------

    def first_index(self) -> int:
        return self.offset + 1

    def last_index(self) -> int:
        return self.offset + len(self.entries)

    def last_term(self) -> int:
        return self.entries[-1].term if self.entries else self.offset_term

    def term(self, i: int) -> int | None:
        """Term of entry ``i``; None if compacted away or beyond the end."""
        off = self.offset
        if i == off:
            return self.offset_term
        if off < i <= off + len(self.entries):
            return self.entries[i - off - 1].term
        return None

    def match_term(self, i: int, term: int) -> bool:
        return self.term(i) == term

    def is_up_to_date(self, last_index: int, term: int) -> bool:
        """Raft 5.4.1: is a candidate's log at least as up to date as ours."""
        lt = self.last_term()
        return term > lt or (term == lt and last_index >= self.last_index())

    def slice(self, lo: int, hi: int, max_bytes: int) -> list[Entry]:
        """Entries [lo, hi), at least one, then as many as fit in ``max_bytes``."""
        off = self.offset
        assert off < lo <= hi <= self.last_index() + 1, "slice out of range"
        ents = self.entries[lo - off - 1 : hi - off - 1]
        if max_bytes > 0 and len(ents) > 1:
            size = 0
            for k, e in enumerate(ents):
                size += len(e.data)
                if size > max_bytes and k > 0:
                    return ents[:k]
        return ents

    def find_conflict(self, ents: Sequence[Entry]) -> int:
        """Index of the first entry in ``ents`` not already in our log (0 if none)."""
        for e in ents:
            if self.term(e.index) != e.term:
                return e.index
        return 0

    def find_conflict_by_term(self, index: int, term: int) -> tuple[int, int]:
        """Largest i <= index whose term is <= ``term`` (etcd's fast backtracking hint)."""
        while index > self.offset:
            t = self.term(index)
            assert t is not None
            if t <= term:
                return index, t
            index -= 1
        return index, self.offset_term if index == self.offset else 0

    def unstable_entries(self) -> list[Entry]:
        if self.stabled >= self.last_index():
            return []
        return self.entries[self.stabled - self.offset :]

    def next_committed(self) -> list[Entry]:
        lo = max(self.applied, self.offset)
        if self.committed <= lo:
            return []
        return self.entries[lo - self.offset : self.committed - self.offset]

    def has_next_committed(self) -> bool:
        return self.committed > max(self.applied, self.offset)

    # ---- mutations -----------------------------------------------------------------

    def append(self, ents: Sequence[Entry]) -> None:
        """Append, truncating any conflicting suffix first (never committed entries)."""
        first = ents[0].index
        assert first > self.committed, f"truncating committed entry {first} <= {self.committed}"
        assert first <= self.last_index() + 1, "gap in log"
        cut = first - self.offset - 1
        if cut < len(self.entries):
            del self.entries[cut:]
            if self.stabled >= first:
                self.stabled = first - 1
        self.entries.extend(ents)

    def maybe_append(
        self, index: int, log_term: int, committed: int, ents: Sequence[Entry]
    ) -> int | None:
        """Follower side of MsgApp; returns the new last index, or None on mismatch."""
        if self.term(index) != log_term:
            return None
        last_new = index + len(ents)
        if ents:
            ci = self.find_conflict(ents)
            if ci:
                assert ci > self.committed, "conflict with a committed entry"
                self.append(ents[ci - index - 1 :])
        self.commit_to(min(committed, last_new))
        return last_new

    def commit_to(self, i: int) -> None:
        if i > self.committed:
            assert i <= self.last_index(), f"commit {i} beyond last index {self.last_index()}"
            self.committed = i

    def maybe_commit(self, index: int, term: int) -> bool:
        """Leader: commit ``index`` only if it is from the current ``term`` (Raft 5.4.2)."""
        if index > self.committed and self.term(index) == term:
            self.commit_to(index)
            return True
        return False

    def stable_to(self, index: int, term: int) -> None:
        if index > self.stabled and self.term(index) == term:
            self.stabled = index

    def restore(self, snapshot: Snapshot) -> None:
        """Replace the whole log by ``snapshot`` (received from the leader)."""
        meta = snapshot.metadata
        assert meta.index > self.committed
        self.snapshot = snapshot
        self.snapshot_unstable = True
        self.restores += 1
        self.offset = meta.index
        self.offset_term = meta.term
        self.entries = []
        self.committed = meta.index
        self.stabled = meta.index

    def compact(self, index: int) -> None:
        """Drop entries up to ``index`` (already applied and persisted)."""
        if index <= self.offset:
            return
        assert index <= self.applied and index <= self.stabled, "compacting unapplied entries"
        t = self.term(index)
        assert t is not None
        del self.entries[: index - self.offset]
        self.offset = index
        self.offset_term = t

"""Child process for the kill -9 WAL test (see test_wal_crash.py).

Usage: ``python wal_writer_proc.py DIR SEED TERM SEGMENT_SIZE``

Opens (or creates) the WAL in DIR from its newest valid snapshot marker, then
loops forever: append a batch of entries of term TERM plus a hard state, sync,
and print the last index of the batch on its own line *after* the sync
returned. The first batch overwrites the uncommitted tail left by the previous
writer (like a new Raft leader would). Every so often it saves a snapshot
marker and releases old segments. The parent SIGKILLs it at random moments.
"""

from __future__ import annotations

import random
import sys

from kvstore.raft.types import Entry, HardState, SnapshotMetadata
from kvstore.storage.wal import WAL, valid_snapshot_markers

LAG = 3  # the commit index trails the last index by this much


def payload(index: int, term: int) -> bytes:
    """Deterministic entry data (~100 bytes) the parent can verify."""
    return (f"{index}:{term}:".encode() * 12)[:100]


def main() -> None:
    dirpath, seed, term, segment_size = (
        sys.argv[1],
        int(sys.argv[2]),
        int(sys.argv[3]),
        int(sys.argv[4]),
    )
    rng = random.Random(seed)
    terms: dict[int, int] = {}
    if WAL.exists(dirpath):
        marker = valid_snapshot_markers(dirpath)[-1]
        snap = SnapshotMetadata(index=marker.index, term=marker.term)
        wal, rec = WAL.open(dirpath, snap, segment_size=segment_size)
        terms[snap.index] = snap.term
        for e in rec.entries:
            terms[e.index] = e.term
        commit = rec.hard_state.commit
        snap_index = snap.index
    else:
        wal = WAL.create(dirpath, b"kill-test", segment_size=segment_size)
        commit = 0
        snap_index = 0
    # Overwrite part of the uncommitted tail, as a new leader would.
    last = wal.last_index
    next_index = max(commit + 1, last + 1 - rng.randint(0, LAG))
    print(f"READY {last}", flush=True)
    batches = 0
    while True:
        n = rng.randint(1, 16)
        entries = [Entry(term, i, data=payload(i, term)) for i in range(next_index, next_index + n)]
        last = next_index + n - 1
        commit = max(commit, last - LAG)
        wal.save(HardState(term=term, vote=1, commit=commit), entries)
        for e in entries:
            terms[e.index] = term
        for i in [k for k in terms if k > last]:
            del terms[i]
        print(last, flush=True)
        next_index = last + 1
        batches += 1
        if batches % 7 == 0 and commit > snap_index:
            snap_index = commit
            wal.save_snapshot(SnapshotMetadata(index=snap_index, term=terms[snap_index]))
            wal.release_to(snap_index)
            for i in [k for k in terms if k < snap_index]:
                del terms[i]


if __name__ == "__main__":
    main()

"""WAL append + fsync micro-benchmark.

Run ``python -m kvstore.storage.bench [--dir DIR] [--seconds S] [--batches 1,16,256]``.
For each batch size it appends batches of ~100-byte entries (plus a hard
state, as the raft loop would), one fdatasync per batch, for a fixed time and
prints entries/s, syncs/s and MB/s. Put ``--dir`` on the disk you care about:
the default temporary directory may be a RAM disk.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time

from kvstore.raft.types import Entry, HardState
from kvstore.storage.wal import DEFAULT_SEGMENT_SIZE, WAL


def run_one(
    dirpath: str, batch: int, seconds: float, entry_size: int, segment_size: int
) -> tuple[float, float, float]:
    """Return (entries/s, syncs/s, MiB/s of entry data) for one batch size."""
    data = os.urandom(entry_size)
    index = 0
    syncs = 0
    with WAL.create(dirpath, b"bench", segment_size=segment_size) as wal:
        t0 = time.perf_counter()
        deadline = t0 + seconds
        while True:
            entries = [Entry(1, i, data=data) for i in range(index + 1, index + 1 + batch)]
            index += batch
            wal.save(HardState(1, 1, index), entries)
            syncs += 1
            now = time.perf_counter()
            if now >= deadline:
                break
    took = now - t0
    return index / took, syncs / took, index * entry_size / took / (1 << 20)


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--dir", default=None, help="parent directory for the WAL (default: cwd)")
    ap.add_argument("--seconds", type=float, default=3.0, help="duration per batch size")
    ap.add_argument("--batches", default="1,16,256", help="comma-separated entries per sync")
    ap.add_argument("--entry-size", type=int, default=100)
    ap.add_argument("--segment-size", type=int, default=DEFAULT_SEGMENT_SIZE)
    args = ap.parse_args(argv)
    parent = args.dir or os.getcwd()
    print(f"WAL bench: dir={parent} entry_size={args.entry_size}B seconds={args.seconds}")
    print(f"{'batch':>6} {'entries/s':>12} {'syncs/s':>10} {'MiB/s':>8}")
    for batch in (int(b) for b in args.batches.split(",")):
        d = tempfile.mkdtemp(prefix="walbench-", dir=parent)
        try:
            eps, sps, mbs = run_one(d, batch, args.seconds, args.entry_size, args.segment_size)
        finally:
            shutil.rmtree(d, ignore_errors=True)
        print(f"{batch:>6} {eps:>12,.0f} {sps:>10,.0f} {mbs:>8.1f}")


if __name__ == "__main__":
    main()

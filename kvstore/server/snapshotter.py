"""Raft snapshots of the applied state: taken every ``--snapshot-count`` entries, installed
when the leader sends one.

As etcd's, a snapshot taken here holds no data: the backend, committed first, is the
state up to its index, and the snapshot file records only where that is (index, term,
membership) so that the WAL before it can go. Copying a backend of gigabytes at every
snapshot flooded the disk and held every member's loop up for seconds under load. A
follower that needs the state gets a copy of the leader's backend made when it is sent
(``Node.snapshot_image``). Writing the file happens in a worker thread; recording it in
Raft and the WAL and compacting the log happen on the loop, between two Readys.
Deleting the WAL segments the snapshot covers happens in a worker thread too, as
etcd's purge runs beside its raft loop: unlinking 64 MiB segments took 75-85 ms each
under ``check perf``, on every member at the same moment. Shutdown waits for both.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

from kvstore.failpoints import failpoint
from kvstore.mvcc.store import MVCCStore
from kvstore.raft import RaftNode
from kvstore.raft.types import Snapshot, SnapshotMetadata
from kvstore.storage import WAL, SnapshotStore

log = logging.getLogger(__name__)

SNAPSHOT_CATCH_UP_ENTRIES = 5000
"""Entries kept behind a snapshot for slow followers (etcd's SnapshotCatchUpEntries)."""


def restore_store(store: MVCCStore, snap_dir: Path, data: bytes) -> None:
    """Replace the store's state by a backend image the leader sent."""
    tmp = snap_dir / "incoming.db"
    tmp.write_bytes(data)
    store.restore(tmp)
    tmp.unlink()


class Snapshotter:
    def __init__(
        self,
        snapshots: SnapshotStore,
        store: MVCCStore,
        wal: WAL,
        raft: RaftNode,
        snapshot_count: int,
        applied_index: int,
    ) -> None:
        self.snapshots = snapshots
        self.store = store
        self.wal = wal
        self.raft = raft
        self.snapshot_count = snapshot_count
        self.files_lock = threading.Lock()
        """The snapshot directory: the raft loop against its worker threads."""
        self._last_index = applied_index
        self._writing: asyncio.Future[tuple[Snapshot, float]] | None = None
        self._releasing: asyncio.Future[int] | None = None

    def maybe_take(self, applied_index: int, wake: Callable[[], None]) -> bool:
        """Start a snapshot if ``snapshot_count`` entries were applied since the last one.

        Returns whether one started (the backend batch was then committed).
        ``wake`` is called when its copy is done (``finish`` then records it).
        """
        if self._writing is not None or applied_index - self._last_index < self.snapshot_count:
            return False
        term = self.raft.log.term(applied_index)
        assert term is not None, "an applied entry is in the log"
        meta = SnapshotMetadata(applied_index, term, self.raft.conf_state)
        # The backend now holds everything up to the snapshot durably: the WAL before it
        # may be released once the snapshot is recorded.
        self.store.commit()
        self._last_index = applied_index  # no second one while this one is on its way
        fut = asyncio.ensure_future(asyncio.to_thread(self._write, meta))
        fut.add_done_callback(lambda _: wake())
        self._writing = fut
        return True

    def _write(self, meta: SnapshotMetadata) -> tuple[Snapshot, float]:
        """Worker thread: write the snapshot file (its metadata: the backend is the data)."""
        t0 = time.monotonic()
        snap = Snapshot(meta, b"")
        with self.files_lock:
            self.snapshots.save(snap)
        return snap, time.monotonic() - t0

    def finish(self) -> None:
        """Record a snapshot whose copy is done: in Raft and the WAL; compact the log."""
        done = self._writing
        if done is None or not done.done():
            return
        self._writing = None
        snap, took = done.result()
        index = snap.metadata.index
        if index <= self.raft.log.snapshot.metadata.index:
            return  # overtaken by a snapshot received from the leader
        failpoint("raftBeforeSaveSnapshot")
        self.raft.create_snapshot(index, snap.data, snap.metadata.conf_state)
        self.wal.save_snapshot(snap.metadata)
        keep = min(SNAPSHOT_CATCH_UP_ENTRIES, self.snapshot_count)
        if index > keep:
            self.raft.compact(index - keep)
        self._release_wal(index)
        with self.files_lock:
            self.snapshots.purge()
        log.info("snapshot at index %d (%d bytes) in %.3fs", index, len(snap.data), took)
        failpoint("raftAfterSaveSnapshot")

    def _release_wal(self, index: int) -> None:
        """Delete the segments snapshot ``index`` covers, in a worker thread.

        One release at a time: while one is in flight, the next snapshot's release
        covers what this one would have. A disk fault marks the WAL failed, and its
        next write stops the member.
        """
        if self._releasing is not None and not self._releasing.done():
            return
        fut = asyncio.ensure_future(asyncio.to_thread(self.wal.release_to, index))
        fut.add_done_callback(_log_release_failure)
        self._releasing = fut

    def save_received(self, snap: Snapshot) -> None:
        """Persist a snapshot from the leader (before its WAL record; any thread)."""
        with self.files_lock:
            self.snapshots.save(snap)

    def install(self, snap: Snapshot) -> None:
        """Replace the applied state with the leader's snapshot."""
        if snap.data:  # (the bootstrap snapshot at index 1 is the empty state)
            restore_store(self.store, Path(self.snapshots.dir), snap.data)
        self._last_index = snap.metadata.index
        log.info("restored snapshot at index %d", snap.metadata.index)

    async def wait_idle(self) -> None:
        """Wait for the snapshot file being written and the WAL segments being released."""
        pending = [f for f in (self._writing, self._releasing) if f is not None]
        if pending:
            await asyncio.wait(pending)

    async def close(self) -> None:
        """Wait for a copy in flight (it reads a pinned view of the backend) and for a
        release of WAL segments (before the WAL closes)."""
        await self.wait_idle()


def _log_release_failure(fut: asyncio.Future[int]) -> None:
    if not fut.cancelled() and (error := fut.exception()) is not None:
        log.error("releasing WAL segments failed: %s", error)

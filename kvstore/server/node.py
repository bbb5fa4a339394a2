"""The node driver: one raft loop that owns the Raft core, the WAL and the MVCC store.

Everything runs on the event loop thread except the WAL write + fsync, which
runs in a worker thread while the loop keeps accepting requests (they queue
and go into the next Ready: group commit). Requests wait on futures keyed by
the request id carried in the entry; the loop resolves them as it applies, so
there is no task per request.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import random
import shutil
import struct
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from google.protobuf.message import Message as PbMessage

from kvstore._pb.etcdserverpb import rpc_pb2
from kvstore._pb.peerpb import peer_pb2
from kvstore.errors import (
    LeaderChangedError,
    NoLeaderError,
    NoSpaceError,
    RequestError,
    RequestTimeoutError,
    RequestTooLargeError,
    StoppedError,
)
from kvstore.mvcc import open_store
from kvstore.mvcc.backend import DEFAULT_MAP_SIZE
from kvstore.mvcc.store import StoreView, costs_space, quota_cost
from kvstore.raft import Config, EntryType, HardState, Message, RaftNode, Ready, initial_snapshot
from kvstore.raft.confchange import decode_conf_change
from kvstore.raft.types import ConfChange, Entry, Role, Snapshot, SnapshotMetadata
from kvstore.server.config import ServerConfig
from kvstore.server.metrics import Metrics
from kvstore.storage import WAL, SnapshotStore, valid_snapshot_markers

log = logging.getLogger(__name__)

MAX_PROPOSALS_PER_READY = 4096
"""Bound on proposals handed to Raft between two Readys."""
MAX_PENDING_PROPOSALS = 50_000
"""Beyond this many proposals waiting to commit, new ones are refused (too many requests)."""
SNAPSHOT_CATCH_UP_ENTRIES = 5000
"""Entries kept behind a snapshot for slow followers (etcd's SnapshotCatchUpEntries)."""
BACKEND_BATCH_INTERVAL = 0.05
"""Seconds between MVCC backend commits (etcd: 100 ms)."""
BACKEND_BATCH_LIMIT = 10_000
"""Applied entries that force a backend commit (etcd: 10,000)."""
BATCH_HOLD_SECONDS = 0.02
"""While this member's previous batch of proposals (or read-index round) is still in flight,
new ones wait for it, at most this long, and then go together: every batch costs a round
of peer messages, far more than its entries do, so under load batches grow with the load.
A request that finds nothing in flight goes at once."""
READ_GATHER_SECONDS = 0.003
READ_GATHER_READERS = 8
"""With at least this many reads waiting (queued now plus the last round), a read round
starts no sooner than READ_GATHER_SECONDS after the one before: a round costs a heartbeat
to every follower and back, so under load more reads share it. Fewer readers (one client
polling) are not delayed: for them the gathering would only cap throughput."""
INLINE_FSYNC_SECONDS = 0.0005
"""A WAL write whose recent average is faster than this runs on the loop thread: handing it
to a worker costs more CPU and latency than it saves. Slower disks get a worker thread, so
the loop keeps serving while the fsync is in flight."""
_META = struct.Struct(">QQ")  # WAL metadata: member id, cluster id

_ONEOF = {
    rpc_pb2.PutRequest: "put",
    rpc_pb2.DeleteRangeRequest: "delete_range",
    rpc_pb2.TxnRequest: "txn",
    rpc_pb2.CompactionRequest: "compaction",
    rpc_pb2.LeaseGrantRequest: "lease_grant",
    rpc_pb2.LeaseRevokeRequest: "lease_revoke",
    rpc_pb2.LeaseCheckpointRequest: "lease_checkpoint",
    rpc_pb2.AlarmRequest: "alarm",
    peer_pb2.MemberAttributes: "member_attributes",
}


class _Waiter:
    __slots__ = ("data", "future", "no_leader_deadline", "proposed")

    def __init__(self, future: asyncio.Future[Any], data: bytes) -> None:
        self.future = future
        self.data = data
        self.no_leader_deadline = 0.0
        self.proposed = False


class Node:
    """One member's Raft driver. Create, then ``await run()`` inside a task group."""

    def __init__(self, cfg: ServerConfig, send: Callable[[list[Message]], None]) -> None:
        self.cfg = cfg
        self.id = cfg.self_id
        self.cluster_id = cfg.cluster_id
        self._send = send
        self.metrics = Metrics()
        self.unreachable: set[int] = set()
        self._snap_reports: list[tuple[int, bool]] = []
        member_dir = Path(cfg.data_dir) / "member"
        wal_dir = member_dir / "wal"
        snap_dir = member_dir / "snap"
        self.snapshots = SnapshotStore(snap_dir)
        self.store, self.hub = open_store(
            member_dir / "db", max_txn_ops=cfg.max_txn_ops, map_size=_map_size(cfg.backend_quota)
        )
        raft_cfg = Config(
            id=self.id,
            election_tick=cfg.election_ticks,
            heartbeat_tick=1,
            max_uncommitted_size=64 << 20,
        )
        rng = random.Random(os.urandom(8))
        if WAL.exists(wal_dir):
            snap = self.snapshots.load_newest(valid_snapshot_markers(wal_dir))
            self.wal, rec = WAL.open(wal_dir, snap.metadata if snap else None)
            if len(rec.metadata) == _META.size:
                # Like etcd, a restarted member keeps the IDs in its WAL: the membership
                # may have changed since --initial-cluster was written (or it joined later).
                mid, cid = _META.unpack(rec.metadata)
                if (mid, cid) != (self.id, self.cluster_id):
                    log.info("member %x of cluster %x (from the WAL)", mid, cid)
                self.id = raft_cfg.id = cfg.self_id = mid
                self.cluster_id = cfg.cluster_id = cid
            self.raft = RaftNode(
                raft_cfg, rng, hard_state=rec.hard_state, snapshot=snap, entries=rec.entries
            )
            log.info(
                "restarted member %x: term=%d commit=%d entries=%d consistent_index=%d",
                self.id,
                rec.hard_state.term,
                rec.hard_state.commit,
                len(rec.entries),
                self.store.consistent_index,
            )
        elif cfg.initial_cluster_state == "existing":
            # Joining a running cluster: an empty log; the leader sends a snapshot or entries.
            self.wal = WAL.create(wal_dir, _META.pack(self.id, self.cluster_id))
            self.raft = RaftNode(raft_cfg, rng)
            log.info("member %x joins existing cluster %x", self.id, self.cluster_id)
        else:
            snap = initial_snapshot(m.id for m in cfg.members)
            hs = HardState(term=1, commit=1)
            self.snapshots.save(snap)
            self.wal = WAL.create(wal_dir, _META.pack(self.id, self.cluster_id))
            self.wal.save_snapshot(snap.metadata)
            self.wal.save(hs, [])
            self.raft = RaftNode(raft_cfg, rng, hard_state=hs, snapshot=snap)
            log.info("started new member %x of cluster %x", self.id, self.cluster_id)
        self.applied_index = self.raft.applied_index
        hs0 = self.wal.hard_state
        self._durable_term_vote = (hs0.term, hs0.vote)
        self._uncommitted_applies = 0
        self._fsync_avg = INLINE_FSYNC_SECONDS  # starts on the worker until measured fast
        self._last_backend_commit = time.monotonic()
        self._snap_index = self.applied_index
        self.committed_index = self.raft.commit_index
        self.leader_id = 0
        self.term = self.raft.term
        self.role = Role.FOLLOWER
        self.leader_changed = asyncio.Event()
        self._stopped = False
        self._nospace_proposed_at = -float("inf")
        self._snapshotting: asyncio.Future[tuple[Snapshot, float]] | None = None
        self._snapshot_files = threading.Lock()  # the snapshot dir: raft loop vs its threads
        self._wake = asyncio.Event()
        self._ticks = 0
        self._inbox: list[Message] = []
        self._proposals: collections.deque[_Waiter] = collections.deque()
        self._no_leader_retry: collections.deque[_Waiter] = collections.deque()
        self._waiters: dict[int, _Waiter] = {}
        self._next_req = int.from_bytes(os.urandom(6), "big") << 16
        self._reads_new: list[asyncio.Future[int]] = []
        self._reads_inflight: dict[bytes, tuple[list[asyncio.Future[int]], float]] = {}
        self._reads_retry: list[tuple[asyncio.Future[int], float]] = []
        self._read_seq = 0
        self._apply_waits: list[tuple[int, asyncio.Future[None]]] = []
        self._batch_tail: _Waiter | None = None  # last proposal of the batch in flight
        self._batch_sent_at = 0.0
        self._read_sent_at = 0.0
        self._last_read_round = 0  # reads in the last round sent
        self._hold_timer: asyncio.TimerHandle | None = None
        self.no_leader_since: float | None = time.monotonic()
        self._conf_proposals: list[tuple[ConfChange, asyncio.Future[bool]]] = []
        self.on_conf_change: Callable[[int, ConfChange], None] | None = None
        """Called with each applied membership change (index, change), after Raft applied it."""
        self.on_restore: Callable[[], None] | None = None
        """Called after the state was replaced by a snapshot from the leader."""
        self.on_member_attributes: Callable[[int, peer_pb2.MemberAttributes], None] | None = None
        """Called with each applied publication of a member's name and client URLs."""

    # ------------------------------------------------------------------ API (loop thread)

    def receive(self, msgs: list[Message]) -> None:
        """Messages from a peer (already checked to come from a member)."""
        self._inbox.extend(msgs)
        self._wake.set()

    def report_snapshot(self, peer: int, ok: bool) -> None:
        self._snap_reports.append((peer, ok))
        self._wake.set()

    def report_unreachable(self, peer: int) -> None:
        self.unreachable.add(peer)
        self._wake.set()

    def _new_id(self) -> int:
        self._next_req += 1
        return self._next_req & 0xFFFF_FFFF_FFFF_FFFF

    async def propose(self, request: PbMessage) -> Any:
        """Replicate ``request`` and return the store's response once applied here."""
        if self._stopped:
            raise StoppedError()
        env = peer_pb2.Request(id=self._new_id())
        getattr(env, _ONEOF[type(request)]).CopyFrom(request)
        data = env.SerializeToString()
        if len(data) > self.cfg.max_request_bytes:
            raise RequestTooLargeError()
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        w = _Waiter(fut, data)
        self._waiters[env.id] = w
        self._proposals.append(w)
        self.metrics.proposals_pending += 1
        self._wake.set()
        # A timer, not wait_for: no extra task per request.
        timer = loop.call_later(self.cfg.request_timeout, _time_out, fut)
        try:
            return await fut
        except RequestTimeoutError:
            self.metrics.proposals_failed += 1
            raise
        finally:
            timer.cancel()
            if self._waiters.pop(env.id, None) is not None:
                self.metrics.proposals_pending -= 1

    def propose_nowait(self, request: PbMessage) -> None:
        """Fire-and-forget proposal (lease revokes/checkpoints decided by the leader)."""
        env = peer_pb2.Request(id=0)
        getattr(env, _ONEOF[type(request)]).CopyFrom(request)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        fut.add_done_callback(_consume)
        self._proposals.append(_Waiter(fut, env.SerializeToString()))
        self._wake.set()

    async def read_index(self) -> None:
        """Wait until this member has applied everything committed when the call began."""
        if self._stopped:
            raise StoppedError()
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[int] = loop.create_future()
        self._reads_new.append(fut)
        self._wake.set()
        timer = loop.call_later(self.cfg.request_timeout, _time_out, fut)
        try:
            index = await fut
        finally:
            timer.cancel()
        await self.wait_applied(index)

    async def await_leader(self) -> int:
        """The current leader's ID, waiting up to two election timeouts for one."""
        deadline = time.monotonic() + 2 * self.cfg.election_ms / 1000
        while not self.leader_id:
            left = deadline - time.monotonic()
            if left <= 0:
                raise NoLeaderError()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.leader_changed.wait(), left)
        return self.leader_id

    async def wait_applied(self, index: int) -> None:
        """Wait (up to the request timeout) until ``index`` is applied here."""
        if self.applied_index >= index:
            return
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        self._apply_waits.append((index, fut))
        timer = loop.call_later(self.cfg.request_timeout, _time_out, fut)
        try:
            await fut
        finally:
            timer.cancel()

    async def propose_conf_change(self, cc: ConfChange) -> bool:
        """Propose a membership change on the leader; False if Raft dropped it.

        Raft drops it while another change is pending or when this member is not
        (or no longer) the leader.
        """
        if self._stopped:
            raise StoppedError()
        fut: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._conf_proposals.append((cc, fut))
        self._wake.set()
        return await fut

    def stop(self) -> None:
        self._stopped = True
        self._wake.set()

    # ------------------------------------------------------------------ the loop

    async def run_ticker(self) -> None:
        """Ticks from the monotonic clock (catching up if the loop was busy)."""
        interval = self.cfg.heartbeat_ms / 1000
        nxt = time.monotonic() + interval
        while not self._stopped:
            await asyncio.sleep(max(0.0, nxt - time.monotonic()))
            now = time.monotonic()
            n = 0
            while nxt <= now:
                nxt += interval
                n += 1
            self._ticks += max(n, 1)
            self._wake.set()

    async def run(self) -> None:
        """The raft loop. Returns when ``stop()`` is called; closes storage."""
        try:
            while not self._stopped:
                await self._wake.wait()
                self._wake.clear()
                self._maybe_snapshot()
                self._feed()
                while self.raft.has_ready() and not self._stopped:
                    rd = self.raft.ready()
                    await self._handle_ready(rd)
                    self.raft.advance(rd)
                    self._maybe_snapshot()
                    self._feed()
        finally:
            self._shutdown()

    def _feed(self) -> None:
        """Step everything that arrived since the last Ready into the core."""
        raft = self.raft
        if self._ticks:
            for _ in range(min(self._ticks, 50)):
                raft.tick()
            self._ticks = 0
            self._expire()
        if self._inbox:
            inbox, self._inbox = self._inbox, []
            for m in inbox:
                raft.step(m)
        if self._snap_reports:
            reports, self._snap_reports = self._snap_reports, []
            for peer, ok in reports:
                raft.report_snapshot(peer, ok)
        if self.unreachable:
            for peer in self.unreachable:
                raft.report_unreachable(peer)
            self.unreachable.clear()
        if self._no_leader_retry and raft.leader_id:
            self._proposals.extendleft(reversed(self._no_leader_retry))
            self._no_leader_retry.clear()
        now = time.monotonic()
        if self._proposals and self._proposals_in_flight(now):
            self._hold_until(self._batch_sent_at + BATCH_HOLD_SECONDS)
        elif self._proposals:
            batch: list[_Waiter] = []
            while self._proposals and len(batch) < MAX_PROPOSALS_PER_READY:
                w = self._proposals.popleft()
                if not w.future.done():
                    batch.append(w)
            if batch:
                if raft.propose_batch([w.data for w in batch]):
                    for w in batch:
                        w.proposed = True
                    self._batch_tail = batch[-1]
                    self._batch_sent_at = now
                else:
                    # Dropped (no leader yet, or a leader transfer): retry once a leader
                    # is known, until an election timeout says there is none.
                    deadline = time.monotonic() + self.cfg.election_ms / 1000
                    for w in batch:
                        w.no_leader_deadline = deadline
                    self._no_leader_retry.extend(batch)
            if self._proposals:
                self._wake.set()
        if self._conf_proposals:
            proposals, self._conf_proposals = self._conf_proposals, []
            for cc, fut in proposals:
                # Only the leader proposes, so a follower never forwards an unchecked change.
                ok = raft.role == Role.LEADER and raft.propose_conf_change(cc)
                if not fut.done():
                    fut.set_result(ok)
        read_deadline = self._read_sent_at + BATCH_HOLD_SECONDS
        gather_until = self._read_sent_at + READ_GATHER_SECONDS
        if self._reads_new and self._reads_inflight and now < read_deadline:
            self._hold_until(read_deadline)
        elif (
            self._reads_new
            and now < gather_until
            and len(self._reads_new) + self._last_read_round >= READ_GATHER_READERS
        ):
            self._hold_until(gather_until)
        elif self._reads_new:
            self._last_read_round = len(self._reads_new)
            self._read_sent_at = now
            self._read_seq += 1
            ctx = struct.pack(">QQ", self.id, self._read_seq)
            futs, self._reads_new = self._reads_new, []
            if raft.read_index(ctx):
                self._reads_inflight[ctx] = (futs, time.monotonic())
            else:
                deadline = time.monotonic() + self.cfg.election_ms / 1000
                self._reads_retry.extend((f, deadline) for f in futs)
        if self._reads_retry and raft.leader_id:
            self._reads_new.extend(f for f, _ in self._reads_retry if not f.done())
            self._reads_retry.clear()
            self._wake.set()

    def _proposals_in_flight(self, now: float) -> bool:
        """Is the previous batch still uncommitted here (and not held for too long)?"""
        tail = self._batch_tail
        if tail is None or tail.future.done():
            return False
        return now - self._batch_sent_at < BATCH_HOLD_SECONDS

    def _hold_until(self, deadline: float) -> None:
        """Wake the loop at ``deadline`` at the latest (a batch in flight may end sooner)."""
        timer = self._hold_timer
        if timer is not None:
            if timer.when() <= deadline:
                return
            timer.cancel()
        # The loop's clock is time.monotonic, like the deadlines here.
        self._hold_timer = asyncio.get_running_loop().call_at(deadline, self._hold_over)

    def _hold_over(self) -> None:
        self._hold_timer = None
        self._wake.set()

    def _expire(self) -> None:
        """Fail requests that waited too long for a leader (called on ticks)."""
        now = time.monotonic()
        while self._no_leader_retry and self._no_leader_retry[0].no_leader_deadline <= now:
            w = self._no_leader_retry.popleft()
            if not w.future.done():
                self.metrics.proposals_failed += 1
                w.future.set_exception(NoLeaderError())
        if self._reads_retry:
            keep = []
            for f, deadline in self._reads_retry:
                if deadline <= now:
                    if not f.done():
                        f.set_exception(NoLeaderError())
                else:
                    keep.append((f, deadline))
            self._reads_retry = keep
        if self._reads_inflight:
            # A read round whose leader died never completes: fail it after a while.
            limit = now - 2 * self.cfg.election_ms / 1000
            for ctx, (futs, started) in list(self._reads_inflight.items()):
                if started < limit:
                    del self._reads_inflight[ctx]
                    for f in futs:
                        if not f.done():
                            f.set_exception(LeaderChangedError())

    async def _handle_ready(self, rd: Ready) -> None:
        if rd.soft_state is not None:
            self._on_soft_state(rd.soft_state.leader_id, rd.soft_state.role)
        hs = rd.hard_state
        must_sync = bool(
            rd.entries
            or rd.snapshot is not None
            or (hs is not None and (hs.term, hs.vote) != self._durable_term_vote)
        )
        if rd.messages and must_sync:
            self._send(rd.messages)  # replication overlaps our own WAL write
        if must_sync:
            if self._fsync_avg < INLINE_FSYNC_SECONDS and rd.snapshot is None:
                if rd.messages:
                    # Let the peer streams write first, so followers persist alongside us.
                    await asyncio.sleep(0)
                took = self._persist(None, rd.entries, hs)
            else:
                took = await asyncio.to_thread(self._persist, rd.snapshot, rd.entries, hs)
            if rd.snapshot is None:
                self._fsync_avg += (took - self._fsync_avg) / 8
            self.metrics.wal_fsync.observe(took)
            if hs is not None:
                self._durable_term_vote = (hs.term, hs.vote)
        elif hs is not None:
            # Only the commit index moved: it can be re-learned from the leader, so it is
            # written without an fsync (etcd's MustSync rule); the next fsync covers it.
            self.wal.save(hs, [], sync=False)
        if rd.hard_state is not None:
            self.term = rd.hard_state.term
            self.committed_index = rd.hard_state.commit
            self.metrics.proposals_committed = rd.hard_state.commit
        if rd.persisted_messages:
            self._send(rd.persisted_messages)
        if rd.snapshot is not None and rd.snapshot.metadata.index > self.applied_index:
            self._restore(rd.snapshot)
        if rd.committed_entries:
            self._apply(rd)
        if rd.messages and not must_sync:
            # Nothing to overlap with: the replies to the requests just applied go out first.
            self._send(rd.messages)
        for rs in rd.read_states:
            entry = self._reads_inflight.pop(rs.request_ctx, None)
            if entry is not None:
                for f in entry[0]:
                    if not f.done():
                        f.set_result(rs.index)

    def _persist(self, snap: Snapshot | None, entries: list[Any], hs: HardState | None) -> float:
        """Make the Ready durable (one write + one fdatasync); returns the seconds it took.

        Runs on the loop or on a worker: timed here, so waiting for a worker does not count.
        """
        t0 = time.monotonic()
        if snap is not None:
            with self._snapshot_files:
                self.snapshots.save(snap)
            self.wal.save_snapshot(snap.metadata)
        self.wal.save(hs, entries)
        return time.monotonic() - t0

    def _maybe_snapshot(self) -> None:
        """Finish a snapshot whose copy is done; start one every ``snapshot_count`` entries.

        Copying the backend and writing the snapshot file happen in a worker
        thread from a pinned view of the applied state, so the loop keeps
        serving meanwhile; only recording it in Raft and the WAL (small) and
        compacting the log happen here, between two Readys.
        """
        done = self._snapshotting
        if done is not None and done.done():
            self._snapshotting = None
            self._record_snapshot(done.result())
        if (
            self._snapshotting is None
            and self.applied_index - self._snap_index >= self.cfg.snapshot_count
        ):
            index = self.applied_index
            term = self.raft.log.term(index)
            assert term is not None
            meta = SnapshotMetadata(index, term, self.raft.conf_state)
            view = self.store.open_view()  # commits the batch
            self._uncommitted_applies = 0
            self._snap_index = index  # no second one while this one is on its way
            fut = asyncio.ensure_future(asyncio.to_thread(self._write_snapshot, meta, view))
            fut.add_done_callback(lambda _: self._wake.set())
            self._snapshotting = fut

    def _write_snapshot(self, meta: SnapshotMetadata, view: StoreView) -> tuple[Snapshot, float]:
        """Worker thread: copy the pinned state and write the snapshot file."""
        t0 = time.monotonic()
        tmpdir = Path(self.snapshots.dir) / "tmp"
        if tmpdir.exists():
            shutil.rmtree(tmpdir)
        path = self.store.copy_view(view, tmpdir)
        snap = Snapshot(meta, path.read_bytes())
        shutil.rmtree(tmpdir)
        with self._snapshot_files:
            self.snapshots.save(snap)
        return snap, time.monotonic() - t0

    def _record_snapshot(self, written: tuple[Snapshot, float]) -> None:
        snap, took = written
        index = snap.metadata.index
        if index <= self.raft.log.snapshot.metadata.index:
            return  # overtaken by a snapshot received from the leader
        self.raft.create_snapshot(index, snap.data, snap.metadata.conf_state)
        self.wal.save_snapshot(snap.metadata)
        keep = min(SNAPSHOT_CATCH_UP_ENTRIES, self.cfg.snapshot_count)
        if index > keep:
            self.raft.compact(index - keep)
        self.wal.release_to(index)
        with self._snapshot_files:
            self.snapshots.purge()
        log.info("snapshot at index %d (%d bytes) in %.3fs", index, len(snap.data), took)

    def _restore(self, snap: Snapshot) -> None:
        if snap.data:  # (the bootstrap snapshot at index 1 is the empty state)
            tmp = Path(self.snapshots.dir) / "incoming.db"
            tmp.write_bytes(snap.data)
            self.store.restore(tmp)
            tmp.unlink()
        self._uncommitted_applies = 0
        self._snap_index = snap.metadata.index
        self.applied_index = snap.metadata.index
        log.info("restored snapshot at index %d", snap.metadata.index)
        if self.on_restore is not None:
            self.on_restore()

    def _on_soft_state(self, leader: int, role: Role) -> None:
        if leader != self.leader_id:
            if leader:
                self.metrics.leader_changes += 1
                self.no_leader_since = None
            else:
                self.no_leader_since = time.monotonic()
            log.info("member %x: leader is now %x (term %d)", self.id, leader, self.raft.term)
            self.leader_id = leader
            # Proposals made through the old leader may be lost with it: fail them now
            # (like a timeout, the client cannot know whether they will still commit).
            for w in self._waiters.values():
                if w.proposed and not w.future.done():
                    w.future.set_exception(LeaderChangedError())
            self.leader_changed.set()
            self.leader_changed = asyncio.Event()
        self.metrics.has_leader = int(bool(leader))
        was_leader = self.role == Role.LEADER
        self.role = role
        self.metrics.is_leader = int(role == Role.LEADER)
        lessor = self.store.lessor
        if role == Role.LEADER and not was_leader:
            lessor.promote(self.cfg.election_ms / 1000)
        elif was_leader and role != Role.LEADER:
            lessor.demote()

    def _apply(self, rd: Ready) -> None:
        t0 = time.monotonic()
        store = self.store
        waiters = self._waiters
        applied = 0
        for e in rd.committed_entries:
            if e.type == EntryType.CONF_CHANGE:
                self._apply_conf_change(e)
                continue
            if not e.data:
                continue  # a new leader's empty entry
            env = peer_pb2.Request.FromString(e.data)
            field = env.WhichOneof("request")
            if field is None:
                continue
            req = getattr(env, field)
            if field == "member_attributes":
                self._apply_member_attributes(e.index, env.id, req)
                continue
            result: Any
            try:
                over_quota = self._over_quota(req)
                result = store.apply(e.index, req)
                if over_quota and result is not None:
                    result = self._on_over_quota()
            except RequestError as exc:
                result = exc
            else:
                self.metrics.count_applied(field, result)
            applied += 1
            w = waiters.pop(env.id, None) if env.id else None
            if w is not None:
                self.metrics.proposals_pending -= 1
                if not w.future.done():
                    if isinstance(result, RequestError):
                        w.future.set_exception(result)
                    else:
                        w.future.set_result(result)
        self._uncommitted_applies += len(rd.committed_entries)
        self.maybe_commit_backend()
        self.metrics.proposals_applied += applied
        self.applied_index = rd.committed_entries[-1].index
        self.metrics.apply_duration.observe(time.monotonic() - t0)
        if self._apply_waits:
            keep = []
            for index, fut in self._apply_waits:
                if fut.done():
                    continue
                if index <= self.applied_index:
                    fut.set_result(None)
                else:
                    keep.append((index, fut))
            self._apply_waits = keep

    def _over_quota(self, request: PbMessage) -> bool:
        """Whether this member's backend has no room for ``request`` (etcd's apply-time check)."""
        quota = self.cfg.backend_quota
        return (
            quota is not None
            and costs_space(request)
            and not self.store.space_exhausted()
            and self.store.db_size() + quota_cost(request) >= quota
        )

    def _on_over_quota(self) -> NoSpaceError:
        """The write is applied everywhere, but here the backend is full: raise the alarm.

        As in etcd, every member judges its own backend, so whichever member
        crosses the quota first raises NOSPACE, and the writer is told.
        """
        now = time.monotonic()
        if now - self._nospace_proposed_at > self.cfg.election_ms / 1000:
            self._nospace_proposed_at = now
            log.warning("backend exceeds its quota; raising a NOSPACE alarm")
            self.propose_nowait(
                rpc_pb2.AlarmRequest(
                    action=rpc_pb2.AlarmRequest.ACTIVATE, memberID=self.id, alarm=rpc_pb2.NOSPACE
                )
            )
        return NoSpaceError()

    def _apply_member_attributes(
        self, index: int, request_id: int, attrs: peer_pb2.MemberAttributes
    ) -> None:
        if self.on_member_attributes is not None:
            self.on_member_attributes(index, attrs)
        w = self._waiters.pop(request_id, None) if request_id else None
        if w is not None:
            self.metrics.proposals_pending -= 1
            if not w.future.done():
                w.future.set_result(None)

    def _apply_conf_change(self, e: Entry) -> None:
        cc = decode_conf_change(e.data)
        self.raft.apply_conf_change(cc)
        if self.on_conf_change is not None:
            self.on_conf_change(e.index, cc)

    def maybe_commit_backend(self, force: bool = False) -> None:
        """Commit the MVCC batch every BACKEND_BATCH_INTERVAL (etcd's backend batching).

        Safe because the WAL is durable first: after a crash the store reopens at its
        last committed consistent index and the WAL replays the rest.
        """
        if not self._uncommitted_applies:
            return
        now = time.monotonic()
        if (
            force
            or now - self._last_backend_commit >= BACKEND_BATCH_INTERVAL
            or self._uncommitted_applies >= BACKEND_BATCH_LIMIT
        ):
            self.store.commit()
            self._last_backend_commit = time.monotonic()
            self.metrics.backend_commit.observe(self._last_backend_commit - now)
            self._uncommitted_applies = 0

    def _shutdown(self) -> None:
        err = StoppedError()
        for w in list(self._waiters.values()):
            if not w.future.done():
                w.future.set_exception(err)
        for futs, _ in self._reads_inflight.values():
            for f in futs:
                if not f.done():
                    f.set_exception(err)
        for _, fut in self._apply_waits:
            if not fut.done():
                fut.set_exception(err)
        for _, conf_fut in self._conf_proposals:
            if not conf_fut.done():
                conf_fut.set_exception(err)
        try:
            self.maybe_commit_backend(force=True)
            self.wal.close()
        finally:
            self.hub.close()
            self.store.close()

    # ------------------------------------------------------------------ leases (leader only)

    async def run_lessor(self) -> None:
        """Leader: propose revokes for expired leases and checkpoints (every 500 ms)."""
        while not self._stopped:
            await asyncio.sleep(0.5)
            if self.role != Role.LEADER:
                continue
            lessor = self.store.lessor
            for lease_id in lessor.expired():
                self.propose_nowait(rpc_pb2.LeaseRevokeRequest(ID=lease_id))
            cps = lessor.due_checkpoints()
            if cps:
                req = rpc_pb2.LeaseCheckpointRequest()
                for lease_id, remaining in cps:
                    req.checkpoints.add(ID=lease_id, remaining_TTL=remaining)
                self.propose_nowait(req)

    def defragment(self) -> None:
        """Rewrite the backend compactly. Like etcd's, it holds up this member meanwhile."""
        if self._stopped:
            raise StoppedError()
        before = self.store.db_size()
        t0 = time.monotonic()
        self.store.defragment()
        self._last_backend_commit = time.monotonic()
        self.metrics.db_size = self.store.db_size()
        log.info(
            "defragmented the backend: %d -> %d bytes in %.3f s",
            before,
            self.metrics.db_size,
            self._last_backend_commit - t0,
        )

    async def run_watch_sync(self) -> None:
        """Catch unsynced watchers up (etcd: every 100 ms); send progress notifications."""
        last_progress = time.monotonic()
        while not self._stopped:
            await asyncio.sleep(0.1)
            self.maybe_commit_backend()
            self.hub.sync_unsynced()
            now = time.monotonic()
            if now - last_progress >= self.cfg.watch_progress_notify_interval:
                last_progress = now
                self.hub.progress_notify()
            self.metrics.db_size = self.store.db_size()


def _time_out(fut: asyncio.Future[Any]) -> None:
    if not fut.done():
        fut.set_exception(RequestTimeoutError())


def _consume(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled():
        fut.exception()


def _map_size(quota: int | None) -> int:
    """LMDB's map bounds the file: leave room past the quota for the writes in flight."""
    return max(DEFAULT_MAP_SIZE, 2 * quota) if quota is not None else DEFAULT_MAP_SIZE

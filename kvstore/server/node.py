"""The raft loop: one task owns the Raft core; ticks, Ready handling, persistence, sending.

(Beside the loop, this module keeps the node's small API: propose, read, wait for an
index, change the membership; each is a few lines over the registries it feeds. It is
past 600 lines because the queue of committed entries, applied in slices between the
loop's other work, belongs to the loop: the loop decides when each slice runs, and
what waits for it. What an entry does when applied is :mod:`~kvstore.server.applier`'s.)

Everything runs on the event loop thread except a slow WAL fsync (a worker
thread while the loop keeps accepting requests, which queue and go into the
next Ready: group commit) and snapshot copies. Requests wait on futures the
loop resolves: proposals by the request id their entry carries
(:mod:`~kvstore.server.waiters`), reads by ReadIndex round
(:mod:`~kvstore.server.reads`); no task per request. Applying an entry is
:mod:`~kvstore.server.applier`'s; snapshots are :mod:`~kvstore.server.snapshotter`'s.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import time
from collections.abc import Callable, Generator
from pathlib import Path
from typing import Any, TypeVar

from google.protobuf.message import Message as PbMessage

from kvstore._pb.peerpb import peer_pb2
from kvstore.errors import (
    LeaderChangedError,
    NoLeaderError,
    RequestError,
    RequestTooLargeError,
    StoppedError,
    TooManyRequestsError,
)
from kvstore.failpoints import failpoint
from kvstore.raft import EntryType, HardState, Message, Ready
from kvstore.raft.confchange import decode_conf_change
from kvstore.raft.types import ConfChange, Entry, Role, Snapshot, SnapshotMetadata
from kvstore.server.applier import Applier, encode_proposal
from kvstore.server.bootstrap import Storage
from kvstore.server.config import ServerConfig
from kvstore.server.metrics import Metrics
from kvstore.server.reads import ApplyWaits, ReadRounds
from kvstore.server.snapshotter import Snapshotter
from kvstore.server.waiters import (
    MAX_PENDING_PROPOSALS,
    ProposalQueue,
    Waiter,
    WaiterRegistry,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

MAX_PROPOSALS_PER_READY = 4096
"""Bound on proposals handed to Raft between two Readys."""
MAX_APPLY_LAG_ENTRIES = 5000
"""Past this many committed entries not yet applied here, new proposals are refused
(etcd's maxGapBetweenApplyAndCommitIndex)."""
HELD_UP_TICKS = 2
"""Ticks counted for a wait of any length after the loop was held up (Go's ticker, which
etcd's raft loop reads, drops the ticks a slow reader missed in the same way). While
this process was held up it read nothing from its peers either: had it counted every
tick it missed, a leader that applied one huge entry would find no follower heard from
and step down, and a follower would call an election against a leader it never listened
to. A wait this long counts as one election timeout's worth of silence only when it is
silence the member could have heard."""
HELD_UP_WARN_TICKS = 5
"""A wait of this many tick intervals is logged (etcd warns of late heartbeats too)."""
BATCH_HOLD_SECONDS = 0.005
"""While this member's previous batch of proposals is still in flight, new ones wait
for it, at most this long, and then go together: every batch costs a round of peer
messages, far more than its entries do, so under load batches grow with the load.
A request that finds nothing in flight goes at once."""
INLINE_FSYNC_SECONDS = 0.002
"""A WAL write whose recent average is faster than this runs on the loop thread: handing
it to a worker costs more CPU and latency than it saves. Slower disks get a worker
thread, so the loop keeps serving while the fsync is in flight."""
FSYNC_AVERAGE_WEIGHT = 8
"""The fsync average moves by 1/this of each new sample."""
APPLY_SLICE_SECONDS = 0.02
"""Apply work done at once before the loop serves others (peers' messages, the ticker,
clients) again. Committed entries wait in a queue meanwhile, as they wait for etcd's
apply goroutine; one DeleteRange of many keys goes in slices (``apply_in_slices``), so a
member deleting 60,000 keys in one request still answers its peers' heartbeats."""
WATCH_SYNC_INTERVAL_SECONDS = 0.1
"""How often unsynced watchers catch up (etcd: 100 ms)."""
LEADER_WAIT_ELECTIONS = 2
"""Election timeouts a request that needs the leader waits for one to be known."""


class Node:
    """One member's Raft driver. Create, then ``await run()`` inside a task group."""

    def __init__(
        self,
        cfg: ServerConfig,
        storage: Storage,
        send: Callable[[list[Message]], None],
        *,
        max_pending_proposals: int = MAX_PENDING_PROPOSALS,
    ) -> None:
        self.cfg = cfg
        self.id = storage.member_id
        self.cluster_id = storage.cluster_id
        self.raft = storage.raft
        self.wal = storage.wal
        self.store = storage.store
        self.hub = storage.hub
        self.auth = storage.auth
        self._send = send
        self.metrics = Metrics()
        self.applied_index = self.raft.applied_index
        self.committed_index = self.raft.commit_index
        self.term = self.raft.term
        self.leader_id = 0
        self._last_leader = 0
        """The last leader this member knew (kept while it knows none)."""
        self.role = Role.FOLLOWER
        self.leader_changed = asyncio.Event()
        self.no_leader_since: float | None = time.monotonic()
        self.snapshotter = Snapshotter(
            storage.snapshots,
            self.store,
            self.wal,
            self.raft,
            cfg.snapshot_count,
            self.applied_index,
        )
        self.applier = Applier(
            self.store,
            cfg.backend_quota,
            self.propose_nowait,
            self._member_attributes_applied,
            alarm_interval=self._election_s,
            metrics=self.metrics,
            auth=storage.auth,
        )
        self.applier.member_id = self.id
        self.on_conf_change: Callable[[int, ConfChange], None] | None = None
        """Called with each applied membership change (index, change), after Raft applied it."""
        self.on_restore: Callable[[], None] | None = None
        """Called after the state was replaced by a snapshot from the leader."""
        self.on_member_attributes: Callable[[int, peer_pb2.MemberAttributes], None] | None = None
        """Called with each applied publication of a member's name and client URLs."""
        hs = self.wal.hard_state
        self._durable_term_vote = (hs.term, hs.vote)
        self._fsync_avg = INLINE_FSYNC_SECONDS  # starts on the worker until measured fast
        self._uncommitted_applies = 0
        self._last_backend_commit = time.monotonic()
        self._stopped = False
        self._wake = asyncio.Event()
        self._ticks = 0
        """Ticks owed to the core since the last feed."""
        self._inbox: list[tuple[int, list[Message]]] = []
        """Messages from peers, each batch with the ticks owed when it arrived."""
        self.unreachable: set[int] = set()
        self._snap_reports: list[tuple[int, bool]] = []
        self._waiters = WaiterRegistry(max_count=max_pending_proposals)
        self._queue = ProposalQueue()
        self._reads = ReadRounds(self.id)
        self._apply_waits = ApplyWaits()
        self._conf_proposals: list[tuple[ConfChange, asyncio.Future[bool]]] = []
        self._next_request_id = int.from_bytes(os.urandom(6), "big") << 16
        self._batch_tail: Waiter | None = None  # last proposal of the batch in flight
        self._batch_sent_at = 0.0
        self._hold_timer: asyncio.Handle | None = None
        self._hold_deadline = 0.0
        self._to_apply: collections.deque[Entry] = collections.deque()
        """Committed entries handed out by Raft, not yet applied."""
        self._queued_conf_changes = 0
        """Membership changes among them: Raft's next Ready waits until they are applied."""
        self._slices: tuple[Entry, Generator[None, None, tuple[int, object]]] | None = None
        """The entry being applied in slices, and what applies it."""

    @property
    def pending_proposals(self) -> int:
        """Proposals waiting for their entry to apply here."""
        return len(self._waiters)

    @property
    def _election_s(self) -> float:
        return self.cfg.election_ms / 1000

    # ------------------------------------------------------------------ API (loop thread)

    def receive(self, msgs: list[Message]) -> None:
        """Messages from a peer (already checked to come from a member)."""
        self._inbox.append((self._ticks, msgs))
        self._wake.set()

    def report_snapshot(self, peer: int, ok: bool) -> None:
        self._snap_reports.append((peer, ok))
        self._wake.set()

    async def snapshot_image(self, dest_dir: Path) -> tuple[SnapshotMetadata, Path] | None:
        """The applied state for a follower that needs a snapshot: where it stands in Raft
        (index, term, membership) and a copy of the backend written into ``dest_dir`` by a
        worker thread from a view pinned now. Like etcd's merged snapshot, it stands at
        the last applied entry, at or past Raft's snapshot. None while a large entry is
        applied in slices (the state is half changed): the send fails and Raft retries."""
        if self._slices is not None:
            return None
        index = self.applied_index
        term = self.raft.log.term(index)
        assert term is not None, "the applied entry is in the log or its snapshot"
        meta = SnapshotMetadata(index, term, self.raft.conf_state)
        view = self.store.open_view()  # (commits the batch: the view is the applied state)
        path = await asyncio.to_thread(self.store.copy_view, view, dest_dir)
        return meta, path

    def report_unreachable(self, peer: int) -> None:
        self.unreachable.add(peer)
        self._wake.set()

    def submit(self, request: PbMessage) -> asyncio.Future[Any]:
        """Replicate ``request``; the future resolves with the store's response once applied
        here (its header filled in), or fails with etcd's error."""
        if self._stopped:
            raise StoppedError()
        if self.committed_index - self.applied_index > MAX_APPLY_LAG_ENTRIES:
            raise TooManyRequestsError()
        self._next_request_id += 1
        request_id = self._next_request_id & 0xFFFF_FFFF_FFFF_FFFF
        data = encode_proposal(request_id, request)
        if len(data) > self.cfg.max_request_bytes:
            raise RequestTooLargeError()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        waiter = Waiter(request_id, data, future, time.monotonic() + self.cfg.request_timeout)
        self._waiters.add(waiter)
        self._queue.queue.append(waiter)
        self._wake.set()
        return future

    async def propose(self, request: PbMessage) -> Any:
        """Replicate ``request`` and return the store's response once applied here."""
        return await self.submit(request)

    def propose_nowait(self, request: PbMessage) -> None:
        """Fire-and-forget proposal (lease revokes/checkpoints decided by the leader)."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        future.add_done_callback(_consume)
        deadline = time.monotonic() + self.cfg.request_timeout
        self._queue.queue.append(Waiter(0, encode_proposal(0, request), future, deadline))
        self._wake.set()

    def linearized(self, read: Callable[[], T]) -> asyncio.Future[T]:
        """``read()``'s result once this member has applied everything committed now."""
        if self._stopped:
            raise StoppedError()
        loop = asyncio.get_running_loop()
        result: asyncio.Future[T] = loop.create_future()
        index = self._reads.request(loop)
        self._wake.set()

        def applied(error: RequestError | None) -> None:
            if result.done():
                return
            if error is not None:
                result.set_exception(error)
                return
            try:
                result.set_result(read())
            except Exception as exc:
                result.set_exception(exc)

        def index_known(fut: asyncio.Future[int]) -> None:
            exc = fut.exception()  # (retrieved even when the reader went away)
            if result.done():
                return
            if exc is not None:
                result.set_exception(exc)
            elif fut.result() <= self.applied_index:
                applied(None)
            else:
                try:
                    deadline = time.monotonic() + self.cfg.request_timeout
                    self._apply_waits.call_when_applied(fut.result(), deadline, applied)
                except RequestError as err:
                    result.set_exception(err)

        index.add_done_callback(index_known)
        return result

    async def read_index(self) -> None:
        """Wait until this member has applied everything committed when the call began."""
        await self.linearized(lambda: None)

    async def await_leader(self) -> int:
        """The current leader's ID, waiting up to two election timeouts for one."""
        deadline = time.monotonic() + LEADER_WAIT_ELECTIONS * self._election_s
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
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def applied(error: RequestError | None) -> None:
            if not done.done():
                if error is None:
                    done.set_result(None)
                else:
                    done.set_exception(error)

        self._apply_waits.call_when_applied(
            index, time.monotonic() + self.cfg.request_timeout, applied
        )
        await done

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

    def defragment(self) -> None:
        """Rewrite the backend compactly. Like etcd's, it holds up this member meanwhile."""
        if self._stopped:
            raise StoppedError()
        self._apply_some(budget=None)  # (the backend commits first: no half-applied entry)
        before = self.store.db_size()
        t0 = time.monotonic()
        self.store.defragment()
        self._last_backend_commit = time.monotonic()
        self._uncommitted_applies = 0
        self.metrics.db_size = self.store.db_size()
        log.info(
            "defragmented the backend: %d -> %d bytes in %.3f s",
            before,
            self.metrics.db_size,
            self._last_backend_commit - t0,
        )

    # ------------------------------------------------------------------ the loops

    async def run(self) -> None:
        """The raft loop. Returns when ``stop()`` is called; closes storage."""
        try:
            while not self._stopped:
                if self._slices is None and not self._to_apply:
                    await self._wake.wait()
                else:
                    await asyncio.sleep(0)  # apply work is left: serve the others first
                self._wake.clear()
                self._between_readys()
                while self.raft.has_ready() and not self._stopped:
                    if self._queued_conf_changes:
                        break  # Raft must see the membership change applied first
                    rd = self.raft.ready()
                    await self._handle_ready(rd)
                    self.raft.advance(rd)
                    self._between_readys()
                self._apply_some()
                if self.raft.has_ready():
                    self._wake.set()  # (held back by a membership change, applied now)
        finally:
            await self._shutdown()

    async def run_ticker(self) -> None:
        """Ticks from the monotonic clock; after the loop was held up, at most
        HELD_UP_TICKS for the whole wait (see there)."""
        interval = self.cfg.heartbeat_ms / 1000
        nxt = time.monotonic() + interval
        while not self._stopped:
            await asyncio.sleep(max(0.0, nxt - time.monotonic()))
            now = time.monotonic()
            n = 0
            while nxt <= now:
                nxt += interval
                n += 1
            if n:  # (a timer may fire a little early: uvloop rounds its delays down)
                if n >= HELD_UP_WARN_TICKS:
                    log.warning(
                        "member %x: the loop was held up %.0f ms (heartbeat %d ms); "
                        "the ticks it missed are not counted",
                        self.id,
                        n * interval * 1000,
                        self.cfg.heartbeat_ms,
                    )
                self._ticks += min(n, HELD_UP_TICKS)
                self._wake.set()

    async def run_watch_sync(self) -> None:
        """Catch unsynced watchers up; send progress notifications."""
        last_progress = time.monotonic()
        while not self._stopped:
            await asyncio.sleep(WATCH_SYNC_INTERVAL_SECONDS)
            self.maybe_commit_backend()
            self.hub.sync_unsynced()
            now = time.monotonic()
            if now - last_progress >= self.cfg.watch_progress_notify_interval:
                last_progress = now
                self.hub.progress_notify()
            self.metrics.db_size = self.store.db_size()

    # ------------------------------------------------------------------ between Readys

    def _between_readys(self) -> None:
        snapshotter = self.snapshotter
        snapshotter.finish()
        if self._slices is None and snapshotter.maybe_take(self.applied_index, self._wake.set):
            self._uncommitted_applies = 0
        self._feed()

    def _feed(self) -> None:
        """Step everything that arrived since the last Ready into the core."""
        raft = self.raft
        # Ticks and messages reach the core in the order they came: after the loop was
        # held up, the ticks it owes must not judge the peers (check-quorum, election
        # timeouts) without the messages that arrived between them.
        ticked = 0
        if self._inbox:
            inbox, self._inbox = self._inbox, []
            for owed, msgs in inbox:
                while ticked < owed:
                    raft.tick()
                    ticked += 1
                for m in msgs:
                    raft.step(m)
        if self._ticks:
            while ticked < self._ticks:
                raft.tick()
                ticked += 1
            self._ticks = 0
            self._expire()
        if self._snap_reports:
            reports, self._snap_reports = self._snap_reports, []
            for peer, ok in reports:
                raft.report_snapshot(peer, ok)
        if self.unreachable:
            for peer in self.unreachable:
                raft.report_unreachable(peer)
            self.unreachable.clear()
        now = time.monotonic()
        if raft.leader_id:
            self._queue.leader_known()
        if self._queue:
            if self._batch_in_flight(now):
                self._hold_until(self._batch_sent_at + BATCH_HOLD_SECONDS)
            else:
                self._propose_batch(now)
        if self._conf_proposals:
            proposals, self._conf_proposals = self._conf_proposals, []
            for cc, fut in proposals:
                # Only the leader proposes, so a follower never forwards an unchecked change.
                ok = raft.role == Role.LEADER and raft.propose_conf_change(cc)
                if not fut.done():
                    fut.set_result(ok)
        if self._reads.waiting or raft.leader_id:
            hold = self._reads.feed(raft, now, bool(raft.leader_id), self._election_s)
            if hold:
                self._hold_until(hold)

    def _propose_batch(self, now: float) -> None:
        batch = self._queue.take(MAX_PROPOSALS_PER_READY)
        if batch:
            if self.raft.propose_batch([w.data for w in batch]):
                for w in batch:
                    w.proposed = True
                self._batch_tail = batch[-1]
                self._batch_sent_at = now
            else:
                # Dropped (no leader yet, or a leader transfer): retry once a leader
                # is known, until an election timeout says there is none.
                self._queue.retry_when_led(batch, now + self._election_s)
        if self._queue:
            self._wake.set()

    def _batch_in_flight(self, now: float) -> bool:
        """Is the previous batch still uncommitted here (and not held for too long)?"""
        tail = self._batch_tail
        if tail is None or tail.future.done():
            return False
        return now - self._batch_sent_at < BATCH_HOLD_SECONDS

    def _hold_until(self, deadline: float) -> None:
        """Wake the loop at ``deadline`` at the latest (a batch in flight may end sooner)."""
        timer = self._hold_timer
        if timer is not None:
            if self._hold_deadline <= deadline:
                return
            timer.cancel()
        # The loop's clock is time.monotonic, like the deadlines here. (uvloop answers a
        # deadline already past with a plain Handle, which has no when(): keep our own.)
        self._hold_deadline = deadline
        self._hold_timer = asyncio.get_running_loop().call_at(deadline, self._hold_over)

    def _hold_over(self) -> None:
        self._hold_timer = None
        self._wake.set()

    def _expire(self) -> None:
        """Fail requests that waited too long (called on ticks)."""
        now = time.monotonic()
        self._queue.expire_leaderless(now, NoLeaderError())
        self._waiters.expire(now)
        self._reads.expire(now, self._election_s)
        self._apply_waits.expire(now)
        self.metrics.proposals_pending = len(self._waiters)

    # ------------------------------------------------------------------ Ready

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
            failpoint("raftBeforeLeaderSend")
            self._send(rd.messages)  # replication overlaps our own WAL write
        if must_sync:
            if self._fsync_avg < INLINE_FSYNC_SECONDS and rd.snapshot is None:
                # (the messages sent above are on the wire already: followers persist
                # alongside us)
                took = self._persist(None, rd.entries, hs)
            else:
                took = await asyncio.to_thread(self._persist, rd.snapshot, rd.entries, hs)
            if rd.snapshot is None:
                self._fsync_avg += (took - self._fsync_avg) / FSYNC_AVERAGE_WEIGHT
            self.metrics.wal_fsync.observe(took)
            if hs is not None:
                self._durable_term_vote = (hs.term, hs.vote)
        elif hs is not None:
            # Only the commit index moved: it can be re-learned from the leader, so it is
            # written without an fsync (etcd's MustSync rule); the next fsync covers it.
            self.wal.save(hs, [], sync=False)
        if hs is not None:
            self.term = hs.term
            self.committed_index = hs.commit
            self.metrics.proposals_committed = hs.commit
        if rd.persisted_messages:
            self._send(rd.persisted_messages)
        if rd.snapshot is not None and rd.snapshot.metadata.index > self.applied_index:
            self._apply_some(budget=None)  # (what came before the snapshot, if anything)
            self._install(rd.snapshot)
        if rd.committed_entries:
            self._to_apply.extend(rd.committed_entries)
            self._queued_conf_changes += sum(
                e.type == EntryType.CONF_CHANGE for e in rd.committed_entries
            )
            self._apply_some()
        if rd.messages and not must_sync:
            # Nothing to overlap with: the replies to the requests just applied go out first.
            self._send(rd.messages)
        if rd.read_states:
            self._reads.resolve(rd.read_states)

    def _persist(self, snap: Snapshot | None, entries: list[Entry], hs: HardState | None) -> float:
        """Make the Ready durable (one write + one fdatasync); returns the seconds it took.

        Runs on the loop or on a worker: timed here, so waiting for a worker does not count.
        """
        t0 = time.monotonic()
        failpoint("raftBeforeSave")
        if snap is not None:
            self.snapshotter.save_received(snap)
            self.wal.save_snapshot(snap.metadata)
        self.wal.save(hs, entries)
        failpoint("raftAfterSave")
        return time.monotonic() - t0

    def _install(self, snap: Snapshot) -> None:
        failpoint("raftBeforeApplySnap")
        self.snapshotter.install(snap)
        self._uncommitted_applies = 0
        self.applied_index = snap.metadata.index
        if self.on_restore is not None:
            self.on_restore()
        failpoint("raftAfterApplySnap")

    def _on_soft_state(self, leader: int, role: Role) -> None:
        if leader != self.leader_id:
            if leader:
                self.no_leader_since = None
                if leader != self._last_leader:
                    # Proposals made through the old leader may be lost with it: fail them
                    # now. Not when this member only lost sight of its leader for a while
                    # (a pre-vote after being held up) and finds the same one again: what
                    # that leader has it still commits (etcd's rule, and its metric).
                    self.metrics.leader_changes += 1
                    self._waiters.fail_proposed(LeaderChangedError())
                    self._last_leader = leader
            else:
                self.no_leader_since = time.monotonic()
            log.info("member %x: leader is now %x (term %d)", self.id, leader, self.raft.term)
            self.leader_id = leader
            self.leader_changed.set()
            self.leader_changed = asyncio.Event()
        self.metrics.has_leader = int(bool(leader))
        was_leader = self.role == Role.LEADER
        self.role = role
        self.metrics.is_leader = int(role == Role.LEADER)
        lessor = self.store.lessor
        if role == Role.LEADER and not was_leader:
            lessor.promote(self._election_s)
        elif was_leader and role != Role.LEADER:
            lessor.demote()

    def _apply_some(self, budget: float | None = APPLY_SLICE_SECONDS) -> None:
        """Apply queued entries for up to ``budget`` seconds (None: all of them)."""
        if self._slices is None and not self._to_apply:
            return
        failpoint("raftBeforeApply")
        t0 = time.monotonic()
        deadline = None if budget is None else t0 + budget
        applier = self.applier
        queue = self._to_apply
        applied = 0
        last = 0
        while True:
            if self._slices is not None:
                entry, slices = self._slices
                try:
                    next(slices)
                except StopIteration as done:
                    self._slices = None
                    self._resolve(*done.value)
                    applied += 1
                    last = entry.index
            elif not queue:
                break
            else:
                e = queue.popleft()
                if e.type == EntryType.CONF_CHANGE:
                    cc = decode_conf_change(e.data)
                    self.raft.apply_conf_change(cc)
                    self._queued_conf_changes -= 1
                    if self.on_conf_change is not None:
                        self.on_conf_change(e.index, cc)
                    last = e.index
                elif applier.may_take_long(e.data):
                    self._slices = (e, applier.apply_in_slices(e.index, e.data))
                    continue
                else:
                    self._resolve(*applier.apply(e.index, e.data))
                    applied += 1
                    last = e.index
            if deadline is not None and time.monotonic() >= deadline:
                break
        if last:
            assert last > self.applied_index, "entries apply in order, once"
            self._uncommitted_applies += last - self.applied_index
            self.applied_index = last
            self.maybe_commit_backend()
            self._apply_waits.applied(last)
        self.metrics.proposals_applied += applied
        self.metrics.apply_duration.observe(time.monotonic() - t0)
        if self._slices is not None or queue:
            self._wake.set()
        failpoint("raftAfterApply")

    def _resolve(self, request_id: int, result: object) -> None:
        if request_id:
            if result is not None and not isinstance(result, RequestError):
                header = result.header  # type: ignore[attr-defined]
                header.cluster_id = self.cluster_id
                header.member_id = self.id
                header.raft_term = self.term
            self._waiters.resolve(request_id, result)

    def _member_attributes_applied(self, index: int, attrs: peer_pb2.MemberAttributes) -> None:
        if self.on_member_attributes is not None:
            self.on_member_attributes(index, attrs)

    def maybe_commit_backend(self, force: bool = False) -> None:
        """Commit the MVCC batch every --backend-batch-interval or -limit entries (etcd's).

        Safe because the WAL is durable first: after a crash the store reopens at its
        last committed consistent index and the WAL replays the rest.
        """
        if not self._uncommitted_applies or self._slices is not None:
            return  # (never half an entry: the consistent index would not cover it)
        now = time.monotonic()
        if (
            force
            or now - self._last_backend_commit >= self.cfg.backend_batch_interval
            or self._uncommitted_applies >= self.cfg.backend_batch_limit
        ):
            self.store.commit()
            self._last_backend_commit = time.monotonic()
            self.metrics.backend_commit.observe(self._last_backend_commit - now)
            self._uncommitted_applies = 0

    async def _shutdown(self) -> None:
        err = StoppedError()
        self._waiters.fail_all(err)
        self._reads.fail_all(err)
        self._apply_waits.fail_all(err)
        for _, conf_fut in self._conf_proposals:
            if not conf_fut.done():
                conf_fut.set_exception(err)
        if self._hold_timer is not None:
            self._hold_timer.cancel()
        # Half an entry applied: the batch is dropped (closing the backend without a
        # commit), and the WAL replays it all after the restart. After a failed WAL
        # write or sync nothing more is made durable: the disk may have dropped pages,
        # and the failure reported must stay the WAL's.
        keep_batch = self._slices is None and not self.wal.failed
        if self._slices is not None:
            self._slices[1].close()
            self._slices = None
        try:
            await self.snapshotter.close()
            if keep_batch:
                self.maybe_commit_backend(force=True)
            self.wal.close()
        finally:
            self.hub.close()
            self.store.close()


def _consume(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled():
        fut.exception()

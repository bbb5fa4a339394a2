"""The Raft state machine: one object per node, driven by tick()/step()/propose().

Sans-I/O: nothing here sleeps, reads a clock, or touches disks or sockets. Output
is collected in a :class:`~kvstore.raft.types.Ready` that the driver persists,
sends and applies before calling :meth:`RaftNode.advance`.

The structure follows etcd-io/raft: ``_step`` handles terms and votes for every
role, then dispatches to ``_step_leader`` / ``_step_candidate`` / ``_step_follower``
whose message switch is the protocol. Deliberate differences from etcd:

* the leader counts its own log only once the driver has persisted it
  (``advance``), so its MsgApps may leave in parallel with its WAL write;
* read-index requests are batched: while one heartbeat round is confirming
  leadership, newer requests queue and share the next round;
* MsgApps for new proposals and commit-index updates are flushed lazily at
  ``ready()``, so many proposals between two Readys share one message per peer;
* a follower accepts a snapshot whose configuration does not list it yet (a
  node added after the snapshot point learns of its addition from later entries).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from kvstore.raft.confchange import (
    ConfChangeError,
    Membership,
    apply_change,
    decode_conf_change,
    encode_conf_change,
)
from kvstore.raft.log import RaftLog
from kvstore.raft.tracker import (
    Inflights,
    Progress,
    ProgressState,
    VoteResult,
    committed_index,
    vote_result,
)
from kvstore.raft.types import (
    EMPTY_HARD_STATE,
    ConfChange,
    ConfState,
    Entry,
    EntryType,
    HardState,
    Message,
    MessageType,
    ReadState,
    Ready,
    Role,
    Snapshot,
    SnapshotMetadata,
    SoftState,
)

__all__ = ["Config", "RaftNode", "initial_snapshot"]

log = logging.getLogger(__name__)

MT = MessageType
NONE = 0  # "no node": no leader / no vote

CAMPAIGN_PRE_ELECTION = b"pre"
CAMPAIGN_ELECTION = b"elect"
CAMPAIGN_TRANSFER = b"transfer"

# May leave before this Ready is persisted: they assert nothing about our own
# unpersisted state (leader traffic is only allowed once our term is durable).
_LEADER_TYPES = frozenset({MT.APP, MT.HEARTBEAT, MT.SNAP, MT.TIMEOUT_NOW, MT.READ_INDEX_RESP})
_ALWAYS_EARLY = frozenset(
    {MT.PRE_VOTE, MT.PRE_VOTE_RESP, MT.PROP, MT.READ_INDEX, MT.TRANSFER_LEADER}
)
_LOCAL = frozenset({MT.HUP, MT.BEAT, MT.UNREACHABLE, MT.SNAP_STATUS, MT.CHECK_QUORUM})


@dataclass(slots=True)
class Config:
    """Tuning knobs (ticks are driver-defined time units, e.g. 100 ms)."""

    id: int
    election_tick: int = 10
    heartbeat_tick: int = 1
    max_size_per_msg: int = 1 << 20  # bytes of entry data per MsgApp (at least one entry)
    max_inflight_msgs: int = 256  # pipelined MsgApps per follower
    max_inflight_bytes: int = 0  # 0 = unlimited
    max_uncommitted_size: int = 0  # leader drops proposals beyond this many bytes; 0 = off
    max_pending_reads: int = 8192  # leader drops read-index requests beyond this many queued
    pre_vote: bool = True
    check_quorum: bool = True
    step_down_on_removal: bool = True

    def validate(self) -> None:
        if self.id == NONE:
            raise ValueError("node id must be non-zero")
        if self.heartbeat_tick <= 0 or self.election_tick <= self.heartbeat_tick:
            raise ValueError("need 0 < heartbeat_tick < election_tick")
        if self.max_inflight_msgs <= 0:
            raise ValueError("max_inflight_msgs must be positive")


def initial_snapshot(voters: Iterable[int], learners: Iterable[int] = ()) -> Snapshot:
    """Bootstrap state shared by the founding members: a snapshot at index 1, term 1.

    Persist it (with ``HardState(term=1, commit=1)``) before first starting a node.
    Nodes added later start empty and receive a snapshot from the leader.
    """
    cs = ConfState(voters=tuple(sorted(voters)), learners=tuple(sorted(learners)))
    return Snapshot(SnapshotMetadata(index=1, term=1, conf_state=cs))


class RaftNode:
    """One Raft peer. Not thread-safe; owned by a single driver loop.

    Start or restart from the durable state: the last persisted ``hard_state``,
    the latest persisted ``snapshot`` and the persisted log ``entries`` after it.
    Committed entries after ``applied`` (default: the snapshot index) are handed
    out again for applying. If the state machine is itself durable beyond the
    snapshot, pass its ``applied`` index and the ``conf_state`` as of that index.
    """

    def __init__(
        self,
        config: Config,
        rng: random.Random,
        *,
        hard_state: HardState = EMPTY_HARD_STATE,
        snapshot: Snapshot | None = None,
        entries: Sequence[Entry] = (),
        applied: int | None = None,
        conf_state: ConfState | None = None,
    ) -> None:
        config.validate()
        self.cfg = config
        self._id = config.id
        self._rng = rng
        snap = snapshot if snapshot is not None else Snapshot()
        self.log = RaftLog(snap, list(entries), hard_state.commit)
        if applied is not None:
            assert snap.metadata.index <= applied <= hard_state.commit
            self.log.applied = applied
        self._term = hard_state.term
        self.vote = hard_state.vote
        self._persisted_hs = hard_state
        self._lead = NONE
        self._role = Role.FOLLOWER
        self._soft = SoftState(NONE, Role.FOLLOWER)
        self.membership = Membership()
        self.progress: dict[int, Progress] = {}
        self.votes: dict[int, bool] = {}
        self.msgs: list[Message] = []
        self.msgs_after: list[Message] = []
        self.read_states: list[ReadState] = []
        self.is_learner = False
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self.randomized_election_timeout = 0
        self.lead_transferee = NONE
        self.pending_conf_index = 0
        self.uncommitted_size = 0
        self._bcast_pending = False  # proposals appended; MsgApps go out at the next ready()
        self._outstanding: Ready | None = None
        self._outstanding_restores = 0
        # read-index state (leader): one heartbeat round in flight, the rest queued
        self._read_seq = 0
        self._read_round: list[Message] = []
        self._read_round_index = 0
        self._read_round_acks: dict[int, bool] = {}
        self._read_queue: list[Message] = []
        self._read_waiting_commit: list[Message] = []
        cs = conf_state if conf_state is not None else snap.metadata.conf_state
        self._set_membership(Membership.from_conf_state(cs))
        me = self.progress.get(self._id)
        self.is_learner = me is not None and me.is_learner
        self._become_follower(self._term, NONE)
        log.debug(
            "raft %d started term=%d commit=%d last=%d",
            self._id,
            self._term,
            self.log.committed,
            self.log.last_index(),
        )

    # ---- properties ----------------------------------------------------------------

    @property
    def id(self) -> int:
        return self._id

    @property
    def term(self) -> int:
        return self._term

    @property
    def leader_id(self) -> int:
        return self._lead

    @property
    def role(self) -> Role:
        return self._role

    @property
    def commit_index(self) -> int:
        return self.log.committed

    @property
    def applied_index(self) -> int:
        return self.log.applied

    @property
    def conf_state(self) -> ConfState:
        return self.membership.to_conf_state()

    def promotable(self) -> bool:
        pr = self.progress.get(self._id)
        return pr is not None and not pr.is_learner

    # ---- public inputs -------------------------------------------------------------

    def tick(self) -> None:
        """Advance logical time by one tick."""
        if self._role == Role.LEADER:
            self._tick_heartbeat()
        else:
            self._tick_election()

    def campaign(self) -> None:
        """Start an election now (as if the election timeout elapsed)."""
        self._step(Message(MT.HUP, frm=self._id))

    def propose(self, data: bytes) -> bool:
        """Propose one normal entry. False means dropped (no leader, transfer, limits)."""
        return self.propose_batch((data,))

    def propose_batch(self, datas: Sequence[bytes]) -> bool:
        """Propose several normal entries in one go (one MsgProp when forwarded)."""
        if not datas:
            return False
        if self._role == Role.LEADER:
            return self._leader_append_datas(datas, EntryType.NORMAL)
        ents = tuple(Entry(0, 0, EntryType.NORMAL, d) for d in datas)
        return self._step(Message(MT.PROP, frm=self._id, entries=ents))

    def propose_conf_change(self, cc: ConfChange) -> bool:
        """Propose a membership change; apply it with ``apply_conf_change`` once committed."""
        ent = Entry(0, 0, EntryType.CONF_CHANGE, encode_conf_change(cc))
        return self._step(Message(MT.PROP, frm=self._id, entries=(ent,)))

    def read_index(self, ctx: bytes) -> bool:
        """Request a linearizable read; a ReadState with ``ctx`` appears in a later Ready.

        ``ctx`` must be unique per request. False means dropped (no leader).
        """
        return self._step(Message(MT.READ_INDEX, frm=self._id, context=ctx))

    def transfer_leadership(self, to: int) -> bool:
        """Ask the leader to hand leadership to ``to`` (MsgTimeoutNow once caught up)."""
        return self._step(Message(MT.TRANSFER_LEADER, frm=to, to=self._id))

    def report_unreachable(self, node_id: int) -> None:
        """Transport could not deliver to ``node_id``: slow down replication to it."""
        self._step(Message(MT.UNREACHABLE, frm=node_id))

    def report_snapshot(self, node_id: int, ok: bool) -> None:
        """Transport outcome of sending a MsgSnap to ``node_id``."""
        self._step(Message(MT.SNAP_STATUS, frm=node_id, reject=not ok))

    def step(self, m: Message) -> bool:
        """Feed a message received from a peer. Returns False if it was dropped."""
        assert m.type not in _LOCAL, "local message types cannot come from the network"
        return self._step(m)

    def apply_conf_change(self, cc: ConfChange | bytes) -> ConfState:
        """Apply a committed membership change (call it while applying its entry)."""
        if isinstance(cc, (bytes, bytearray, memoryview)):
            cc = decode_conf_change(bytes(cc))
        new = apply_change(self.membership, cc)
        return self._switch_to_membership(new)

    def create_snapshot(self, index: int, data: bytes, conf_state: ConfState | None = None) -> None:
        """Record an application snapshot at applied ``index`` (sent to lagging peers).

        ``conf_state`` defaults to the current membership, which is the one as of
        ``index`` only if ``index`` is the applied index.
        """
        lg = self.log
        if index <= lg.snapshot.metadata.index:
            return
        assert index <= lg.applied, "snapshot beyond applied index"
        term = lg.term(index)
        assert term is not None, "snapshot index already compacted"
        cs = conf_state if conf_state is not None else self.membership.to_conf_state()
        lg.snapshot = Snapshot(SnapshotMetadata(index, term, cs), data)

    def compact(self, index: int) -> None:
        """Drop log entries up to ``index`` (<= latest snapshot index)."""
        assert index <= self.log.snapshot.metadata.index, "compact beyond the snapshot"
        self.log.compact(index)

    # ---- Ready / advance -----------------------------------------------------------

    def has_ready(self) -> bool:
        """Is there anything for the driver to do?"""
        if self._outstanding is not None:
            return False
        lg = self.log
        if self._bcast_pending:
            self._flush_bcast()
        return bool(
            self.msgs
            or self.msgs_after
            or self.read_states
            or lg.stabled < lg.last_index()
            or lg.snapshot_unstable
            or lg.has_next_committed()
            or self._hard_state_changed()
            or self._soft != SoftState(self._lead, self._role)
        )

    def ready(self) -> Ready:
        """Collect pending work. Call ``advance(ready)`` before the next ``ready()``."""
        assert self._outstanding is None, "ready() called twice without advance()"
        if self._bcast_pending:
            self._flush_bcast()
        lg = self.log
        rd = Ready()
        soft = SoftState(self._lead, self._role)
        if soft != self._soft:
            rd.soft_state = soft
            self._soft = soft
        if self._hard_state_changed():
            rd.hard_state = HardState(self._term, self.vote, lg.committed)
        if lg.snapshot_unstable:
            rd.snapshot = lg.snapshot
        rd.entries = lg.unstable_entries()
        rd.committed_entries = lg.next_committed()
        if self.msgs:
            rd.messages = self.msgs
            self.msgs = []
        if self.msgs_after:
            rd.persisted_messages = self.msgs_after
            self.msgs_after = []
        if self.read_states:
            rd.read_states = self.read_states
            self.read_states = []
        self._outstanding = rd
        self._outstanding_restores = lg.restores
        return rd

    def advance(self, rd: Ready) -> None:
        """The driver persisted, sent and applied ``rd``."""
        assert rd is self._outstanding, "advance() with a Ready that is not outstanding"
        self._outstanding = None
        lg = self.log
        if rd.hard_state is not None:
            self._persisted_hs = rd.hard_state
        if rd.snapshot is not None:
            if lg.snapshot is rd.snapshot:  # else a newer one arrived since ready()
                lg.snapshot_unstable = False
            if rd.snapshot.metadata.index > lg.applied:
                lg.applied = rd.snapshot.metadata.index
        if rd.entries and lg.restores == self._outstanding_restores:
            # (If a snapshot replaced the log since ready(), these entries are not
            # the durable prefix any more: the snapshot has to be persisted first.)
            last = rd.entries[-1]
            lg.stable_to(last.index, last.term)
        if rd.committed_entries:
            last_applied = rd.committed_entries[-1].index
            assert last_applied >= lg.applied
            lg.applied = last_applied
            if self._role == Role.LEADER and self.uncommitted_size:
                size = 0
                for e in rd.committed_entries:
                    size += len(e.data)
                self.uncommitted_size = max(0, self.uncommitted_size - size)
        if self._role == Role.LEADER:
            pr = self.progress.get(self._id)
            # The leader's own vote for its entries counts only once they are durable.
            if pr is not None and pr.maybe_update(lg.stabled) and self._maybe_commit():
                self._bcast_pending = True
            if (
                self.membership.auto_leave
                and lg.applied >= self.pending_conf_index
                and self._role == Role.LEADER
            ):
                # Leave the joint config on our own (ConfChangeTransition AUTO/IMPLICIT).
                ok = self._leader_append_datas(
                    (encode_conf_change(ConfChange()),), EntryType.CONF_CHANGE
                )
                if ok:
                    self.pending_conf_index = lg.last_index()
                    log.info("raft %d: proposing to leave joint config", self._id)

    def _hard_state_changed(self) -> bool:
        hs = self._persisted_hs
        return hs.term != self._term or hs.vote != self.vote or hs.commit != self.log.committed

    # ---- sending -------------------------------------------------------------------

    def _send(self, m: Message) -> None:
        if m.frm == NONE:
            m.frm = self._id
        t = m.type
        if t in (MT.VOTE, MT.VOTE_RESP, MT.PRE_VOTE, MT.PRE_VOTE_RESP):
            assert m.term != 0, "vote messages carry a term"
        elif t != MT.PROP and t != MT.READ_INDEX:
            m.term = self._term
        if t in _ALWAYS_EARLY or (t in _LEADER_TYPES and self._term == self._persisted_hs.term):
            self.msgs.append(m)
        else:
            self.msgs_after.append(m)

    def _send_append(self, to: int) -> None:
        self._maybe_send_append(to, True)

    def _maybe_send_append(self, to: int, send_if_empty: bool) -> bool:
        pr = self.progress[to]
        if pr.is_paused():
            return False
        lg = self.log
        prev = pr.next - 1
        prev_term = lg.term(prev)
        if prev_term is None:
            return self._maybe_send_snapshot(to, pr)
        last = lg.last_index()
        if pr.next <= last and (pr.state == ProgressState.PROBE or not pr.inflights.full()):
            ents = lg.slice(pr.next, last + 1, self.cfg.max_size_per_msg)
        else:
            ents = []  # an empty probe: carries the commit index, detects lost messages
        if not ents and not send_if_empty:
            return False
        nbytes = 0
        if ents and self.cfg.max_inflight_bytes:
            for e in ents:
                nbytes += len(e.data)
        self._send(
            Message(
                MT.APP, to=to, index=prev, log_term=prev_term, entries=ents, commit=lg.committed
            )
        )
        pr.sent_entries(len(ents), nbytes)
        pr.sent_commit = lg.committed
        return True

    def _maybe_send_snapshot(self, to: int, pr: Progress) -> bool:
        if not pr.recent_active:
            return False  # don't ship a snapshot to a peer that looks down
        snap = self.log.snapshot
        assert not snap.is_empty, "need a snapshot but none exists"
        pr.become_snapshot(snap.metadata.index)
        log.debug("raft %d: sending snapshot %d to %d", self._id, snap.metadata.index, to)
        self._send(Message(MT.SNAP, to=to, snapshot=snap))
        return True

    def _bcast_append(self) -> None:
        for pid in self.progress:
            if pid != self._id:
                self._send_append(pid)

    def _flush_bcast(self) -> None:
        self._bcast_pending = False
        if self._role != Role.LEADER:
            return
        committed = self.log.committed
        for pid, pr in self.progress.items():
            if pid != self._id:
                # New entries if any; else an empty MsgApp if it has not seen our commit.
                self._maybe_send_append(pid, pr.sent_commit < committed)

    def _bcast_heartbeat(self, ctx: bytes) -> None:
        committed = self.log.committed
        for pid, pr in self.progress.items():
            if pid != self._id:
                c = pr.match if pr.match < committed else committed
                self._send(Message(MT.HEARTBEAT, to=pid, commit=c, context=ctx))

    # ---- role transitions ----------------------------------------------------------

    def _reset(self, term: int) -> None:
        if term != self._term:
            assert term > self._term, "term must never decrease"
            self._term = term
            self.vote = NONE
        self._lead = NONE
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self.randomized_election_timeout = self.cfg.election_tick + self._rng.randrange(
            self.cfg.election_tick
        )
        self.lead_transferee = NONE
        self.votes = {}
        last = self.log.last_index()
        for pid, pr in self.progress.items():
            pr.match = self.log.stabled if pid == self._id else 0
            pr.next = last + 1
            pr.state = ProgressState.PROBE
            pr.pending_snapshot = 0
            pr.probe_sent = False
            pr.recent_active = pid == self._id
            pr.inflights.reset()
        self.pending_conf_index = 0
        self.uncommitted_size = 0
        self._bcast_pending = False
        self._read_round = []
        self._read_round_acks = {}
        self._read_queue = []
        self._read_waiting_commit = []

    def _become_follower(self, term: int, lead: int) -> None:
        self._reset(term)
        self._lead = lead
        self._role = Role.FOLLOWER

    def _become_pre_candidate(self) -> None:
        assert self._role != Role.LEADER, "leader cannot become pre-candidate"
        # No term bump and no vote: a pre-election changes nothing durable.
        self.votes = {}
        self._lead = NONE
        self._role = Role.PRE_CANDIDATE
        log.debug("raft %d became pre-candidate at term %d", self._id, self._term)

    def _become_candidate(self) -> None:
        assert self._role != Role.LEADER, "leader cannot become candidate"
        self._reset(self._term + 1)
        self.vote = self._id
        self._role = Role.CANDIDATE
        log.debug("raft %d became candidate at term %d", self._id, self._term)

    def _become_leader(self) -> None:
        assert self._role != Role.FOLLOWER, "follower cannot become leader directly"
        self._reset(self._term)
        self._lead = self._id
        self._role = Role.LEADER
        pr = self.progress.get(self._id)
        if pr is not None:
            pr.become_replicate()
            pr.match = self.log.stabled
            pr.next = self.log.last_index() + 1
        # Conf changes in our log may be unapplied: allow no new one before they are.
        self.pending_conf_index = self.log.last_index()
        # The empty entry of the new term lets us commit (and serve reads) promptly.
        self._leader_append([Entry(self._term, self.log.last_index() + 1)], 0)
        log.info("raft %d became leader at term %d", self._id, self._term)

    def _hup(self, kind: bytes) -> None:
        if self._role == Role.LEADER:
            return
        if not self.promotable():
            log.debug("raft %d is not promotable; not campaigning", self._id)
            return
        if self._has_unapplied_conf_changes():
            log.debug("raft %d has unapplied conf changes; not campaigning", self._id)
            return
        self._campaign(kind)

    def _has_unapplied_conf_changes(self) -> bool:
        return any(e.type == EntryType.CONF_CHANGE for e in self.log.next_committed())

    def _campaign(self, kind: bytes) -> None:
        if kind == CAMPAIGN_PRE_ELECTION:
            self._become_pre_candidate()
            vote_type = MT.PRE_VOTE
            term = self._term + 1  # the term we would campaign for; ours is unchanged
        else:
            self._become_candidate()
            vote_type = MT.VOTE
            term = self._term
        if self._poll(self._id, True) == VoteResult.WON:
            # Single-voter config: we win on our own vote.
            if kind == CAMPAIGN_PRE_ELECTION:
                self._campaign(CAMPAIGN_ELECTION)
            else:
                self._become_leader()
            return
        last_index, last_term = self.log.last_index(), self.log.last_term()
        ctx = CAMPAIGN_TRANSFER if kind == CAMPAIGN_TRANSFER else b""
        for pid in sorted(self.membership.voters | self.membership.voters_outgoing):
            if pid == self._id:
                continue
            self._send(
                Message(
                    vote_type, to=pid, term=term, index=last_index, log_term=last_term, context=ctx
                )
            )

    def _poll(self, frm: int, granted: bool) -> VoteResult:
        if frm not in self.votes:
            self.votes[frm] = granted
        return vote_result(self.membership, self.votes)

    # ---- ticks ---------------------------------------------------------------------

    def _tick_election(self) -> None:
        self.election_elapsed += 1
        if self.election_elapsed >= self.randomized_election_timeout and self.promotable():
            self.election_elapsed = 0
            self._step(Message(MT.HUP, frm=self._id))

    def _tick_heartbeat(self) -> None:
        self.heartbeat_elapsed += 1
        self.election_elapsed += 1
        if self.election_elapsed >= self.cfg.election_tick:
            self.election_elapsed = 0
            if self.cfg.check_quorum:
                self._step(Message(MT.CHECK_QUORUM, frm=self._id))
            if self._role == Role.LEADER and self.lead_transferee != NONE:
                self.lead_transferee = NONE  # transfer timed out
        if self._role != Role.LEADER:
            return
        if self.heartbeat_elapsed >= self.cfg.heartbeat_tick:
            self.heartbeat_elapsed = 0
            self._step(Message(MT.BEAT, frm=self._id))

    # ---- step: term handling common to all roles -----------------------------------

    def _step(self, m: Message) -> bool:
        t = m.type
        if m.term == 0:
            pass  # local message (or forwarded proposal / read index)
        elif m.term > self._term:
            if t == MT.VOTE or t == MT.PRE_VOTE:
                force = m.context == CAMPAIGN_TRANSFER
                in_lease = (
                    self.cfg.check_quorum
                    and self._lead != NONE
                    and self.election_elapsed < self.cfg.election_tick
                )
                if not force and in_lease:
                    # We heard from a live leader recently: don't let a rejoining
                    # or partitioned node depose it (check-quorum lease).
                    return True
            if t == MT.PRE_VOTE:
                pass  # never change term because of a pre-vote request
            elif t == MT.PRE_VOTE_RESP and not m.reject:
                pass  # our term moves only when the pre-election succeeds
            else:
                log.debug(
                    "raft %d: term %d -> %d on %s from %d",
                    self._id,
                    self._term,
                    m.term,
                    t.name,
                    m.frm,
                )
                if t in (MT.APP, MT.HEARTBEAT, MT.SNAP):
                    self._become_follower(m.term, m.frm)
                else:
                    self._become_follower(m.term, NONE)
        elif m.term < self._term:
            if (self.cfg.check_quorum or self.cfg.pre_vote) and t in (MT.HEARTBEAT, MT.APP):
                # A stale leader (e.g. after a partition); tell it our term so it steps
                # down, since with pre-vote/check-quorum we may never bump its term.
                self._send(Message(MT.APP_RESP, to=m.frm))
            elif t == MT.PRE_VOTE:
                self._send(Message(MT.PRE_VOTE_RESP, to=m.frm, term=self._term, reject=True))
            return True

        if t == MT.HUP:
            self._hup(CAMPAIGN_PRE_ELECTION if self.cfg.pre_vote else CAMPAIGN_ELECTION)
            return True
        if t == MT.VOTE or t == MT.PRE_VOTE:
            self._handle_vote_request(m)
            return True
        role = self._role
        if role == Role.LEADER:
            return self._step_leader(m)
        if role == Role.FOLLOWER:
            return self._step_follower(m)
        return self._step_candidate(m)

    def _handle_vote_request(self, m: Message) -> None:
        resp = MT.VOTE_RESP if m.type == MT.VOTE else MT.PRE_VOTE_RESP
        can_vote = (
            self.vote == m.frm
            or (self.vote == NONE and self._lead == NONE)
            or (m.type == MT.PRE_VOTE and m.term > self._term)
        )
        if can_vote and self.log.is_up_to_date(m.index, m.log_term):
            # Grant with the request's term so a pre-candidate can count it.
            self._send(Message(resp, to=m.frm, term=m.term))
            if m.type == MT.VOTE:
                self.election_elapsed = 0
                self.vote = m.frm
        else:
            self._send(Message(resp, to=m.frm, term=self._term, reject=True))

    # ---- step: leader --------------------------------------------------------------

    def _step_leader(self, m: Message) -> bool:
        t = m.type
        if t == MT.BEAT:
            self._bcast_heartbeat(self._read_ctx())
            return True
        if t == MT.CHECK_QUORUM:
            if not self._quorum_active():
                log.info("raft %d stepped down: quorum inactive", self._id)
                self._become_follower(self._term, NONE)
                return True
            for pid, pr in self.progress.items():
                pr.recent_active = pid == self._id
            return True
        if t == MT.PROP:
            return self._leader_propose(m)
        if t == MT.READ_INDEX:
            return self._leader_read_index(m)

        peer = self.progress.get(m.frm)
        if peer is None:
            return False
        pr = peer
        if t == MT.APP_RESP:
            self._handle_append_response(m, pr)
        elif t == MT.HEARTBEAT_RESP:
            pr.recent_active = True
            pr.probe_sent = False
            if pr.match < self.log.last_index() or pr.state == ProgressState.PROBE:
                self._send_append(m.frm)
            if m.context:
                self._read_ack(m.frm, m.context)
        elif t == MT.SNAP_STATUS:
            if pr.state != ProgressState.SNAPSHOT:
                return True
            if m.reject:
                pr.pending_snapshot = 0
            pr.become_probe()
            # Wait for a heartbeat response before probing again.
            pr.probe_sent = True
        elif t == MT.UNREACHABLE:
            if pr.state == ProgressState.REPLICATE:
                pr.become_probe()
        elif t == MT.TRANSFER_LEADER:
            self._leader_transfer(m.frm, pr)
        return True

    def _handle_append_response(self, m: Message, pr: Progress) -> None:
        pr.recent_active = True
        if m.reject:
            next_probe = m.reject_hint
            if m.log_term > 0:
                next_probe, _ = self.log.find_conflict_by_term(m.reject_hint, m.log_term)
            if pr.maybe_decr_to(m.index, next_probe):
                if pr.state == ProgressState.REPLICATE:
                    pr.become_probe()
                self._send_append(m.frm)
            return
        was_paused = pr.is_paused()
        if not pr.maybe_update(m.index):
            return
        if pr.state == ProgressState.PROBE:
            pr.become_replicate()
        elif pr.state == ProgressState.SNAPSHOT:
            if pr.match >= pr.pending_snapshot:
                pr.become_probe()
                pr.become_replicate()
        else:
            pr.inflights.free_le(m.index)
        if self._maybe_commit():
            # The new commit index rides on the next MsgApps, flushed at ready().
            self._bcast_pending = True
        elif was_paused:
            self._send_append(m.frm)
        while self._maybe_send_append(m.frm, False):
            pass
        if m.frm == self.lead_transferee and pr.match == self.log.last_index():
            self._send(Message(MT.TIMEOUT_NOW, to=m.frm))

    def _maybe_commit(self) -> bool:
        ci = committed_index(self.membership, self.progress)
        lg = self.log
        old = lg.committed
        if not lg.maybe_commit(ci, self._term):
            return False
        assert lg.committed > old
        if self._read_waiting_commit and lg.term(lg.committed) == self._term:
            waiting, self._read_waiting_commit = self._read_waiting_commit, []
            for req in waiting:
                self._leader_read_index(req)
        return True

    def _quorum_active(self) -> bool:
        active = {
            pid: True for pid, pr in self.progress.items() if pr.recent_active or pid == self._id
        }
        return vote_result(self.membership, active) == VoteResult.WON

    def _leader_propose(self, m: Message) -> bool:
        if self._id not in self.progress:
            return False  # we were removed from the config
        if self.lead_transferee != NONE:
            return False  # leadership is moving; caller retries on the new leader
        ents = m.entries
        if not ents:
            return False
        for k, e in enumerate(ents):
            if e.type == EntryType.CONF_CHANGE:
                if not self._conf_change_allowed(e.data):
                    return False
                self.pending_conf_index = self.log.last_index() + k + 1
        first = self.log.last_index() + 1
        term = self._term
        new = [Entry(term, first + k, e.type, e.data) for k, e in enumerate(ents)]
        size = 0
        for e in new:
            size += len(e.data)
        return self._leader_append(new, size)

    def _conf_change_allowed(self, data: bytes) -> bool:
        if self.pending_conf_index > self.log.applied:
            log.info("raft %d: rejecting conf change, another one is pending", self._id)
            return False
        try:
            cc = decode_conf_change(data)
            apply_change(self.membership, cc)  # dry run: refuse what cannot apply
        except ConfChangeError as exc:
            log.info("raft %d: rejecting conf change: %s", self._id, exc)
            return False
        return True

    def _leader_append_datas(self, datas: Sequence[bytes], typ: EntryType) -> bool:
        if self._id not in self.progress or self.lead_transferee != NONE:
            return False
        first = self.log.last_index() + 1
        term = self._term
        new = [Entry(term, first + k, typ, d) for k, d in enumerate(datas)]
        size = 0
        for d in datas:
            size += len(d)
        return self._leader_append(new, size)

    def _leader_append(self, ents: list[Entry], size: int) -> bool:
        limit = self.cfg.max_uncommitted_size
        if limit and self.uncommitted_size and self.uncommitted_size + size > limit:
            return False  # bound the uncommitted tail; caller retries later
        self.uncommitted_size += size
        self.log.append(ents)
        # MsgApps are sent lazily at ready(): many proposals share one message.
        self._bcast_pending = True
        return True

    def _leader_transfer(self, target: int, pr: Progress) -> None:
        if pr.is_learner:
            return
        if self.lead_transferee != NONE:
            if self.lead_transferee == target:
                return
            self.lead_transferee = NONE
        if target == self._id:
            return
        self.election_elapsed = 0  # the transfer must finish within one election timeout
        self.lead_transferee = target
        if pr.match == self.log.last_index():
            self._send(Message(MT.TIMEOUT_NOW, to=target))
        else:
            self._send_append(target)

    # ---- read index (leader) -------------------------------------------------------

    def _read_ctx(self) -> bytes:
        if not self._read_round:
            return b""
        return self._read_seq.to_bytes(8, "big")

    def _leader_read_index(self, m: Message) -> bool:
        lg = self.log
        queued = len(self._read_round) + len(self._read_queue) + len(self._read_waiting_commit)
        if queued >= self.cfg.max_pending_reads:
            return False  # bounded queue: the caller retries
        if self.membership.voters == {self._id} and not self.membership.voters_outgoing:
            self._answer_read(m, lg.committed)
            return True
        if lg.term(lg.committed) != self._term:
            # Our commit index may lag until an entry of our term commits (Raft 6.4).
            self._read_waiting_commit.append(m)
            return True
        if self._read_round:
            self._read_queue.append(m)  # batched into the next heartbeat round
            return True
        self._start_read_round([m])
        return True

    def _start_read_round(self, reqs: list[Message]) -> None:
        self._read_seq += 1
        self._read_round = reqs
        self._read_round_index = self.log.committed
        self._read_round_acks = {self._id: True}
        self._bcast_heartbeat(self._read_ctx())

    def _read_ack(self, frm: int, ctx: bytes) -> None:
        if not self._read_round or ctx != self._read_ctx():
            return  # an answer to an old round
        self._read_round_acks[frm] = True
        if vote_result(self.membership, self._read_round_acks) != VoteResult.WON:
            return
        index = self._read_round_index
        for req in self._read_round:
            self._answer_read(req, index)
        self._read_round = []
        if self._read_queue:
            queued, self._read_queue = self._read_queue, []
            self._start_read_round(queued)

    def _answer_read(self, req: Message, index: int) -> None:
        if req.frm == self._id or req.frm == NONE:
            self.read_states.append(ReadState(index, req.context))
        else:
            self._send(Message(MT.READ_INDEX_RESP, to=req.frm, index=index, context=req.context))

    # ---- step: candidate / pre-candidate -------------------------------------------

    def _step_candidate(self, m: Message) -> bool:
        t = m.type
        if t == MT.PROP or t == MT.READ_INDEX or t == MT.TRANSFER_LEADER:
            return False  # no leader to take it
        if t == MT.APP:
            self._become_follower(m.term, m.frm)
            self._handle_append(m)
        elif t == MT.HEARTBEAT:
            self._become_follower(m.term, m.frm)
            self._handle_heartbeat(m)
        elif t == MT.SNAP:
            self._become_follower(m.term, m.frm)
            self._handle_snapshot(m)
        elif (t == MT.PRE_VOTE_RESP and self._role == Role.PRE_CANDIDATE) or (
            t == MT.VOTE_RESP and self._role == Role.CANDIDATE
        ):
            res = self._poll(m.frm, not m.reject)
            if res == VoteResult.WON:
                if self._role == Role.PRE_CANDIDATE:
                    self._campaign(CAMPAIGN_ELECTION)
                else:
                    self._become_leader()
                    self._bcast_append()
            elif res == VoteResult.LOST:
                # A rejected pre-vote with a higher term already made us a follower.
                self._become_follower(self._term, NONE)
        return True

    # ---- step: follower ------------------------------------------------------------

    def _step_follower(self, m: Message) -> bool:
        t = m.type
        if t == MT.PROP or t == MT.READ_INDEX or t == MT.TRANSFER_LEADER:
            if self._lead == NONE:
                return False  # caller retries once a leader is known
            m.to = self._lead
            self._send(m)  # forwarded; "accepted" does not mean it will commit
        elif t == MT.APP:
            self.election_elapsed = 0
            self._lead = m.frm
            self._handle_append(m)
        elif t == MT.HEARTBEAT:
            self.election_elapsed = 0
            self._lead = m.frm
            self._handle_heartbeat(m)
        elif t == MT.SNAP:
            self.election_elapsed = 0
            self._lead = m.frm
            self._handle_snapshot(m)
        elif t == MT.TIMEOUT_NOW:
            log.info("raft %d: leader transfer to us, campaigning at once", self._id)
            self._hup(CAMPAIGN_TRANSFER)
        elif t == MT.READ_INDEX_RESP:
            self.read_states.append(ReadState(m.index, m.context))
        return True

    def _handle_append(self, m: Message) -> None:
        lg = self.log
        if m.index < lg.committed:
            self._send(Message(MT.APP_RESP, to=m.frm, index=lg.committed))
            return
        last_new = lg.maybe_append(m.index, m.log_term, m.commit, m.entries)
        if last_new is not None:
            self._send(Message(MT.APP_RESP, to=m.frm, index=last_new))
            return
        hint = min(m.index, lg.last_index())
        hint, hint_term = lg.find_conflict_by_term(hint, m.log_term)
        self._send(
            Message(
                MT.APP_RESP,
                to=m.frm,
                index=m.index,
                reject=True,
                reject_hint=hint,
                log_term=hint_term,
            )
        )

    def _handle_heartbeat(self, m: Message) -> None:
        self.log.commit_to(min(m.commit, self.log.last_index()))
        self._send(Message(MT.HEARTBEAT_RESP, to=m.frm, context=m.context))

    def _handle_snapshot(self, m: Message) -> None:
        assert m.snapshot is not None
        if self._restore(m.snapshot):
            self._send(Message(MT.APP_RESP, to=m.frm, index=self.log.last_index()))
        else:
            self._send(Message(MT.APP_RESP, to=m.frm, index=self.log.committed))

    def _restore(self, snap: Snapshot) -> bool:
        meta = snap.metadata
        lg = self.log
        if meta.index <= lg.committed:
            return False  # stale (e.g. delivered late): we already have all of it
        rd = self._outstanding
        if rd is not None and rd.committed_entries:
            # The driver is still applying entries below the snapshot (conf changes
            # among them); swapping the membership under it would be wrong. The
            # leader sends the snapshot again later.
            return False
        cs = meta.conf_state
        # Unlike etcd we accept a snapshot whose config does not list us yet: a node
        # added after the snapshot point learns of its own addition from the entries
        # that follow (it cannot campaign meanwhile, as it is not promotable).
        if lg.match_term(meta.index, meta.term):
            # We have the entries already: just fast-forward the commit index.
            lg.commit_to(meta.index)
            return False
        lg.restore(snap)
        self._set_membership(Membership.from_conf_state(cs))
        pr = self.progress.get(self._id)
        self.is_learner = pr is not None and pr.is_learner
        log.info("raft %d restored snapshot index=%d term=%d", self._id, meta.index, meta.term)
        return True

    # ---- membership ----------------------------------------------------------------

    def _set_membership(self, new: Membership) -> None:
        old = self.progress
        progress: dict[int, Progress] = {}
        next_index = self.log.last_index() + 1
        for pid in sorted(new.tracked()):
            pr = old.get(pid)
            if pr is None:
                pr = Progress(
                    next_index,
                    Inflights(self.cfg.max_inflight_msgs, self.cfg.max_inflight_bytes),
                    False,
                )
                if pid == self._id:
                    pr.match = self.log.stabled
            pr.is_learner = pid in new.learners
            progress[pid] = pr
        self.progress = progress
        self.membership = new

    def _switch_to_membership(self, new: Membership) -> ConfState:
        self._set_membership(new)
        cs = new.to_conf_state()
        pr = self.progress.get(self._id)
        self.is_learner = pr is not None and pr.is_learner
        log.info("raft %d applied conf change: %s", self._id, cs)
        if (pr is None or self.is_learner) and self._role == Role.LEADER:
            if self.cfg.step_down_on_removal:
                self._become_follower(self._term, NONE)
            return cs
        if self._role != Role.LEADER or not cs.voters:
            return cs
        if self._maybe_commit():
            self._bcast_pending = True
        else:
            for pid in self.progress:
                if pid != self._id:
                    self._maybe_send_append(pid, False)
        if self.lead_transferee != NONE and self.lead_transferee not in new.voters:
            self.lead_transferee = NONE
        return cs

"""Deterministic Raft cluster simulator with fault injection and safety checkers.

One ``Sim`` owns N RaftNodes, a lossy network, a simulated disk per node and a
tiny key-value state machine per node. Every action draws from one seeded
``random.Random``, so a seed reproduces a run exactly (transcript included).

The disk keeps only what a node persisted from its Readys; ``persisted_messages``
leave only after that persist step, and a crash can happen between sending a
Ready's early messages and persisting it. Checks run incrementally as events
happen (see ``SafetyError`` raises): election safety, log matching, leader
completeness, state machine safety, durability across restarts, linearizable reads.
"""

from __future__ import annotations

import bisect
import itertools
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from kvstore.raft import (
    ConfChange,
    ConfChangeSingle,
    ConfChangeTransition,
    ConfChangeType,
    Config,
    ConfState,
    Entry,
    EntryType,
    HardState,
    Message,
    MessageType,
    RaftNode,
    Ready,
    Role,
    Snapshot,
    initial_snapshot,
)

MT = MessageType


# Relative weights of the random events. "churn" loses leaders much more often,
# which is what exposes commit-rule bugs such as the paper's figure 8.
PROFILES: dict[str, dict[str, float]] = {
    "normal": {
        "tick": 12,
        "deliver": 50,
        "drop": 2,
        "duplicate": 1.5,
        "propose": 14.5,
        "read": 6,
        "partition": 1,
        "crash": 0.4,
        "restart": 3.1,
        "conf_change": 1,
        "transfer": 1,
        "compact": 1.5,
        "skew": 6,
        "fsync": 4,
    },
    "churn": {
        "tick": 12,
        "deliver": 50,
        "drop": 3,
        "duplicate": 1.5,
        "propose": 14.5,
        "read": 4,
        "partition": 3,
        "crash": 2,
        "restart": 5,
        "conf_change": 0.5,
        "transfer": 2,
        "compact": 1,
        "skew": 4,
        "fsync": 4,
    },
}


class SafetyError(AssertionError):
    """An invariant of Raft (or of the simulated clients) was violated."""


@dataclass(slots=True)
class Disk:
    hs: HardState = field(default_factory=HardState)
    snapshot: Snapshot = field(default_factory=Snapshot)
    entries: list[Entry] = field(default_factory=list)

    def last_index(self) -> int:
        return self.snapshot.metadata.index + len(self.entries)


@dataclass(slots=True)
class SimNode:
    id: int
    disk: Disk
    raft: RaftNode | None = None
    sm: dict[int, tuple[bytes, int]] = field(default_factory=dict)  # key -> (write, index)
    applied: int = 0
    conf: ConfState = field(default_factory=ConfState)
    incarnation: int = 0
    waiting_reads: list[tuple[bytes, int]] = field(default_factory=list)  # (ctx, read index)
    pending: Ready | None = None  # a Ready whose fsync has not finished yet


@dataclass(slots=True)
class PendingRead:
    node: int
    min_index: int  # every entry committed when the read was issued
    need: dict[int, int]  # key -> index of the last write acknowledged before the read


@dataclass(slots=True)
class SimConfig:
    nodes: int = 3
    steps: int = 2000
    pre_vote: bool = True
    check_quorum: bool = True
    max_nodes: int = 0  # ids above ``nodes`` that may join later; 0 = nodes + 2
    crash_mid_ready: float = 0.002
    slow_fsync: float = 0.05  # chance that a Ready's persistence overlaps later steps
    keys: int = 4
    trace_len: int | None = 400  # None keeps the full transcript
    max_size_per_msg: int = 48  # bytes of entry data per MsgApp (1 = one entry per message)
    max_inflight_msgs: int = 4
    profile: str = "normal"  # event weights, see PROFILES


class Sim:
    """A cluster plus its environment. Drive it with ``run()`` or the scenario helpers."""

    def __init__(self, seed: int, cfg: SimConfig | None = None) -> None:
        self.seed = seed
        self.cfg = cfg = cfg or SimConfig()
        self.rng = random.Random(seed)
        self.now = 0  # event counter
        self.ticks = 0
        self.trace: deque[str] = deque(maxlen=cfg.trace_len)
        self.net: list[Message] = []
        self.blocked: set[tuple[int, int]] = set()
        self.max_net = 400
        n = cfg.nodes
        self.max_id = cfg.max_nodes or n + 2
        self.nodes: dict[int, SimNode] = {}
        boot = initial_snapshot(range(1, n + 1))
        for i in range(1, n + 1):
            disk = Disk(HardState(term=1, commit=1), boot, [])
            self.nodes[i] = SimNode(i, disk)
            self._start(self.nodes[i])
        # checker state
        self.leaders: dict[int, int] = {}  # term -> leader id
        self.applied_log: list[tuple[int, int, bytes]] = [(0, 0, b""), (1, 1, b"")]
        self.seen: dict[tuple[int, int], tuple[bytes, int]] = {}  # (index, term) -> data, prev
        self.write_key: dict[bytes, int] = {}
        self.acked: dict[int, int] = {}  # key -> highest acknowledged write index
        self.reads: dict[bytes, PendingRead] = {}
        self.next_write = 0
        self.next_read = 0
        self.snaps: dict[bytes, tuple[dict[int, tuple[bytes, int]], int]] = {}
        self.stats = {
            "commits": 0,
            "reads": 0,
            "elections": 0,
            "snapshots_sent": 0,
            "conf_changes": 0,
            "crashes": 0,
        }
        self.faults = True
        weights = PROFILES[cfg.profile]
        self._actions = list(weights)
        self._cum = list(itertools.accumulate(weights.values()))

    # ---- helpers -------------------------------------------------------------------

    def log(self, text: str) -> None:
        self.trace.append(f"{self.now:6d} t{self.ticks:<5d} {text}")

    def alive(self) -> list[SimNode]:
        return [n for n in self.nodes.values() if n.raft is not None]

    def leader(self) -> SimNode | None:
        best: SimNode | None = None
        for n in self.nodes.values():
            r = n.raft
            if (
                r is not None
                and r.role == Role.LEADER
                and (best is None or best.raft is None or r.term > best.raft.term)
            ):
                best = n
        return best

    def _start(self, n: SimNode) -> None:
        d = n.disk
        if d.hs.commit > d.last_index():
            raise SafetyError(f"node {n.id}: persisted commit {d.hs.commit} beyond its log")
        n.incarnation += 1
        rng = random.Random(self.seed * 7919 + n.id * 104729 + n.incarnation)
        cfg = Config(
            id=n.id,
            election_tick=10,
            heartbeat_tick=2,
            max_size_per_msg=self.cfg.max_size_per_msg,
            max_inflight_msgs=self.cfg.max_inflight_msgs,
            pre_vote=self.cfg.pre_vote,
            check_quorum=self.cfg.check_quorum,
        )
        n.raft = RaftNode(cfg, rng, hard_state=d.hs, snapshot=d.snapshot, entries=list(d.entries))
        self._restore_sm(n, d.snapshot)
        n.waiting_reads = []

    def _restore_sm(self, n: SimNode, snap: Snapshot) -> None:
        if snap.data:
            sm, _ = self.snaps[snap.data]
            n.sm = dict(sm)
        else:
            n.sm = {}
        n.applied = snap.metadata.index
        n.conf = snap.metadata.conf_state

    # ---- network -------------------------------------------------------------------

    def send(self, m: Message) -> None:
        if m.type == MT.SNAP:
            self.stats["snapshots_sent"] += 1
        self.net.append(m)
        if len(self.net) > self.max_net:
            self._drop(0, "overflow")

    def _drop(self, i: int, why: str) -> None:
        m = self.net.pop(i)
        self.log(f"drop({why}) {fmt(m)}")
        if m.type == MT.SNAP:
            self._snap_status(m, False)

    def _snap_status(self, m: Message, ok: bool) -> None:
        s = self.nodes.get(m.frm)
        if s is not None and s.raft is not None:
            s.raft.report_snapshot(m.to, ok)
            self.process(s)

    def deliver(self, i: int) -> None:
        m = self.net.pop(i)
        dst = self.nodes.get(m.to)
        if dst is None or dst.raft is None or (m.frm, m.to) in self.blocked:
            self.log(f"lost {fmt(m)}")
            if m.type == MT.SNAP:
                self._snap_status(m, False)
            elif m.type == MT.APP:
                # The transport noticed the peer is unreachable (etcd's ReportUnreachable).
                s = self.nodes.get(m.frm)
                if s is not None and s.raft is not None:
                    s.raft.report_unreachable(m.to)
                    self.process(s)
            return
        self.log(f"deliver {fmt(m)}")
        dst.raft.step(m)
        self.process(dst)
        if m.type == MT.SNAP:
            self._snap_status(m, True)

    # ---- the driver: Ready handling --------------------------------------------------

    def process(self, n: SimNode) -> None:
        """Drive the node's Ready loop, like the server's raft loop would."""
        r = n.raft
        while r is not None and n.pending is None and r.has_ready():
            rd = r.ready()
            if rd.soft_state is not None:
                self._on_role(n, r)
            for m in rd.messages:
                self.send(m)
            if self.faults and rd.must_sync:
                x = self.rng.random()
                if x < self.cfg.crash_mid_ready:
                    self.log(f"crash n{n.id} before persisting its Ready")
                    self.crash(n)
                    return
                if x < self.cfg.crash_mid_ready + self.cfg.slow_fsync:
                    # The fsync is slow: the node keeps stepping messages meanwhile.
                    n.pending = rd
                    self.log(f"n{n.id} fsync in progress")
                    return
            self._complete(n, r, rd)

    def _complete(self, n: SimNode, r: RaftNode, rd: Ready) -> None:
        """Second half of Ready handling: persist, send the rest, apply, advance."""
        self._persist(n, rd)
        for m in rd.persisted_messages:
            self.send(m)
        if rd.snapshot is not None:
            self._restore_sm(n, rd.snapshot)
            self.log(f"n{n.id} restored snapshot {rd.snapshot.metadata.index}")
        if rd.committed_entries:
            self._apply(n, r, rd.committed_entries)
        for rs in rd.read_states:
            self._on_read_state(n, rs.request_ctx, rs.index)
        r.advance(rd)

    def fsync_done(self, n: SimNode) -> None:
        rd, n.pending = n.pending, None
        assert rd is not None and n.raft is not None
        self.log(f"n{n.id} fsync done")
        self._complete(n, n.raft, rd)
        self.process(n)

    def _on_role(self, n: SimNode, r: RaftNode) -> None:
        self.log(f"n{n.id} is {r.role.name} term={r.term} lead={r.leader_id}")
        if r.role != Role.LEADER:
            return
        self.stats["elections"] += 1
        prev = self.leaders.setdefault(r.term, n.id)
        if prev != n.id:
            raise SafetyError(f"two leaders in term {r.term}: n{prev} and n{n.id}")
        # Leader completeness: every committed entry is in the new leader's log.
        c = len(self.applied_log) - 1
        lg = r.log
        if lg.last_index() < c:
            raise SafetyError(
                f"leader n{n.id} term {r.term} lacks committed index {c} (last {lg.last_index()})"
            )
        if c > lg.offset and lg.term(c) != self.applied_log[c][0]:
            raise SafetyError(f"leader n{n.id} has a different entry at committed index {c}")

    def _persist(self, n: SimNode, rd: Ready) -> None:
        d = n.disk
        if rd.snapshot is not None:
            d.snapshot = rd.snapshot
            d.entries = []
        if rd.entries:
            first = rd.entries[0].index
            base = d.snapshot.metadata.index
            if first <= base or first > d.last_index() + 1:
                raise SafetyError(f"n{n.id}: persisting entries from {first}, disk base {base}")
            del d.entries[first - base - 1 :]
            prev_term = d.entries[-1].term if d.entries else d.snapshot.metadata.term
            seen = self.seen
            for e in rd.entries:
                key = (e.index, e.term)
                got = seen.get(key)
                if got is None:
                    seen[key] = (e.data, prev_term)
                elif got[0] != e.data or got[1] != prev_term:
                    raise SafetyError(
                        f"log matching: n{n.id} entry {key} differs from another node's copy"
                    )
                prev_term = e.term
            d.entries.extend(rd.entries)
        if rd.hard_state is not None:
            old = d.hs
            hs = rd.hard_state
            if hs.term < old.term or (hs.term == old.term and old.vote and hs.vote != old.vote):
                raise SafetyError(f"n{n.id}: hard state regressed {old} -> {hs}")
            if hs.commit < old.commit:
                raise SafetyError(f"n{n.id}: commit regressed {old.commit} -> {hs.commit}")
            d.hs = hs

    def _apply(self, n: SimNode, r: RaftNode, ents: list[Entry]) -> None:
        alog = self.applied_log
        for e in ents:
            if e.index != n.applied + 1:
                raise SafetyError(f"n{n.id} applies {e.index} after {n.applied}")
            if e.index < len(alog):
                t, _, data = alog[e.index]
                if t != e.term or data != e.data:
                    raise SafetyError(
                        f"state machine safety: n{n.id} applied a different entry at {e.index}"
                    )
            else:
                alog.append((e.term, e.index, e.data))
                self.stats["commits"] += 1
            n.applied = e.index
            if e.type == EntryType.CONF_CHANGE:
                n.conf = r.apply_conf_change(e.data)
                self.log(f"n{n.id} applied conf@{e.index} -> {fmt_cs(n.conf)}")
            elif e.data:
                key = self.write_key[e.data]
                n.sm[key] = (e.data, e.index)
                if self.acked.get(key, 0) < e.index:
                    self.acked[key] = e.index  # the client sees success now
        self.log(f"n{n.id} applied {ents[0].index}..{ents[-1].index}")
        if n.waiting_reads:
            self._finish_reads(n)

    # ---- clients -------------------------------------------------------------------

    def propose(self, n: SimNode) -> None:
        assert n.raft is not None
        self.next_write += 1
        key = self.rng.randrange(self.cfg.keys)
        data = b"k%d=w%d" % (key, self.next_write)
        self.write_key[data] = key
        ok = n.raft.propose(data)
        self.log(f"propose n{n.id} {data.decode()} {'ok' if ok else 'dropped'}")
        self.process(n)

    def read(self, n: SimNode) -> None:
        assert n.raft is not None
        self.next_read += 1
        ctx = b"r%d" % self.next_read
        ok = n.raft.read_index(ctx)
        self.log(f"read n{n.id} {ctx.decode()} {'ok' if ok else 'dropped'}")
        if ok:
            self.reads[ctx] = PendingRead(n.id, len(self.applied_log) - 1, dict(self.acked))
        self.process(n)

    def _on_read_state(self, n: SimNode, ctx: bytes, index: int) -> None:
        pr = self.reads.get(ctx)
        if pr is None or pr.node != n.id:
            return
        if index < pr.min_index:
            raise SafetyError(
                f"read {ctx.decode()} at n{n.id}: read index {index} < committed {pr.min_index}"
            )
        n.waiting_reads.append((ctx, index))
        self._finish_reads(n)

    def _finish_reads(self, n: SimNode) -> None:
        keep = []
        for ctx, index in n.waiting_reads:
            if n.applied < index:
                keep.append((ctx, index))
                continue
            pr = self.reads.get(ctx)  # kept: a duplicated request may be answered twice
            if pr is None:
                continue
            for key, need in pr.need.items():
                have = n.sm.get(key, (b"", 0))[1]
                if have < need:
                    raise SafetyError(
                        f"stale read {ctx.decode()} at n{n.id}: key {key} reflects write "
                        f"@{have}, but write @{need} was acknowledged before the read"
                    )
            self.stats["reads"] += 1
            self.log(f"read {ctx.decode()} done at n{n.id} index={index}")
        n.waiting_reads = keep

    # ---- faults and operator actions -----------------------------------------------

    def crash(self, n: SimNode) -> None:
        self.stats["crashes"] += 1
        n.raft = None
        n.pending = None
        n.waiting_reads = []
        for ctx in [c for c, p in self.reads.items() if p.node == n.id]:
            del self.reads[ctx]
        self.log(f"crash n{n.id}")

    def restart(self, n: SimNode) -> None:
        self._start(n)
        self.log(
            f"restart n{n.id} term={n.disk.hs.term} commit={n.disk.hs.commit} "
            f"last={n.disk.last_index()}"
        )
        assert n.raft is not None
        self.process(n)

    def tick_all(self) -> None:
        self.ticks += 1
        self.log("tick")
        for n in list(self.nodes.values()):
            if n.raft is not None:
                n.raft.tick()
                self.process(n)

    def compact(self, n: SimNode) -> None:
        r = n.raft
        assert r is not None
        if n.applied <= r.log.snapshot.metadata.index:
            return
        token = b"snap:%d:%d" % (n.id, self.now)
        self.snaps[token] = (dict(n.sm), n.applied)
        r.create_snapshot(n.applied, token, n.conf)
        keep = self.rng.choice((0, 3, 20))
        r.compact(max(r.log.offset, n.applied - keep))
        snap = r.log.snapshot
        d = n.disk
        cut = snap.metadata.index - d.snapshot.metadata.index
        d.snapshot = snap
        del d.entries[:cut]
        self.log(f"compact n{n.id} snapshot@{snap.metadata.index}")

    def conf_change(self) -> None:
        ld = self.leader()
        if ld is None or ld.raft is None:
            return
        r = ld.raft
        cs = r.conf_state
        rng = self.rng
        voters = list(cs.voters)
        learners = list(cs.learners)
        cc: ConfChange | None = None
        fresh = [i for i in range(1, self.max_id + 1) if i not in self.nodes]
        if cs.voters_outgoing:
            cc = ConfChange()  # leave joint (needed after JOINT_EXPLICIT)
        else:
            choice = rng.randrange(5)
            trans = ConfChangeTransition(rng.randrange(3))
            add, rem, learner = (
                ConfChangeType.ADD_NODE,
                ConfChangeType.REMOVE_NODE,
                (ConfChangeType.ADD_LEARNER_NODE),
            )
            if choice == 0 and fresh:
                nid = fresh[0]
                self.nodes[nid] = SimNode(nid, Disk())
                self._start(self.nodes[nid])
                self.log(f"new node n{nid}")
                cc = ConfChange((ConfChangeSingle(learner, nid),))
            elif choice == 1 and learners:
                cc = ConfChange((ConfChangeSingle(add, rng.choice(learners)),))
            elif choice == 2 and len(voters) > 3:
                cc = ConfChange((ConfChangeSingle(rem, rng.choice(voters)),), trans)
            elif choice == 3 and learners and len(voters) >= 3:
                # Swap a voter for a learner through a joint config.
                cc = ConfChange(
                    (
                        ConfChangeSingle(add, rng.choice(learners)),
                        ConfChangeSingle(learner, rng.choice(voters)),
                    ),
                    trans,
                )
            elif choice == 4 and learners:
                cc = ConfChange((ConfChangeSingle(rem, rng.choice(learners)),))
        if cc is None:
            return
        ok = r.propose_conf_change(cc)
        self.stats["conf_changes"] += ok
        self.log(f"conf change at n{ld.id}: {fmt_cc(cc)} {'ok' if ok else 'refused'}")
        self.process(ld)

    def partition(self) -> None:
        rng = self.rng
        ids = sorted(self.nodes)
        kind = rng.randrange(4)
        self.blocked = set()
        if kind == 0:
            self.log("heal network")
            return
        if kind == 1:  # symmetric split
            side = {i for i in ids if rng.random() < 0.5}
            for a in ids:
                for b in ids:
                    if (a in side) != (b in side):
                        self.blocked.add((a, b))
            self.log(f"partition {sorted(side)} | {[i for i in ids if i not in side]}")
        elif kind == 2:  # isolate one node, often the leader
            ld = self.leader()
            x = ld.id if ld is not None and rng.random() < 0.5 else rng.choice(ids)
            for b in ids:
                if b != x:
                    self.blocked.add((x, b))
                    self.blocked.add((b, x))
            self.log(f"isolate n{x}")
        else:  # one-way links
            for _ in range(rng.randrange(1, 4)):
                a, b = rng.sample(ids, 2)
                self.blocked.add((a, b))
            self.log(f"one-way block {sorted(self.blocked)}")

    def transfer(self) -> None:
        ld = self.leader()
        if ld is None or ld.raft is None:
            return
        voters = [v for v in ld.raft.conf_state.voters if v != ld.id]
        if not voters:
            return
        to = self.rng.choice(voters)
        self.log(f"transfer leadership n{ld.id} -> n{to}")
        ld.raft.transfer_leadership(to)
        self.process(ld)

    # ---- the random walk -----------------------------------------------------------

    def step(self) -> None:
        """One random event, drawn with the weights of this run's fault profile."""
        self.now += 1
        rng = self.rng
        action = self._actions[bisect.bisect_right(self._cum, rng.random() * self._cum[-1])]
        net = self.net
        if action == "deliver" and not net:
            action = "tick"
        if action == "tick":
            self.tick_all()
        elif action == "deliver":
            # Mostly near-FIFO; sometimes far out of order (reordering / delay).
            # A burst proportional to the backlog keeps the queue (and latency) bounded.
            for _ in range(1 + len(net) // 6):
                if not net:
                    break
                far = rng.random() < 0.1
                i = rng.randrange(len(net)) if far else rng.randrange(min(len(net), 3))
                self.deliver(i)
        elif action == "drop":
            if net:
                self._drop(rng.randrange(len(net)), "random")
        elif action == "duplicate":
            if net:
                m = net[rng.randrange(len(net))]
                self.net.append(dup(m))
                self.log(f"duplicate {fmt(m)}")
        elif action == "propose":
            alive = self.alive()
            if alive:
                self.propose(rng.choice(alive))
        elif action == "read":
            alive = self.alive()
            if alive:
                self.read(rng.choice(alive))
        elif action == "partition":
            self.partition()
        elif action == "crash":
            alive = self.alive()
            ld = self.leader()
            if ld is not None and rng.random() < 0.5:
                self.crash(ld)
            elif len(alive) > 1:
                self.crash(rng.choice(alive))
        elif action == "restart":
            dead = [n for n in self.nodes.values() if n.raft is None]
            if dead:
                self.restart(rng.choice(dead))
        elif action == "conf_change":
            self.conf_change()
        elif action == "transfer":
            self.transfer()
        elif action == "compact":
            alive = self.alive()
            if alive:
                self.compact(rng.choice(alive))
        elif action == "fsync":
            slow = [n for n in self.nodes.values() if n.pending is not None]
            if slow:
                self.fsync_done(rng.choice(slow))
        else:  # "skew": a single node's clock runs ahead
            alive = self.alive()
            if alive:
                n = rng.choice(alive)
                assert n.raft is not None
                n.raft.tick()
                self.log(f"tick n{n.id}")
                self.process(n)

    def run(self, steps: int | None = None) -> None:
        for _ in range(self.cfg.steps if steps is None else steps):
            self.step()

    # ---- liveness --------------------------------------------------------------------

    def heal(self) -> None:
        self.faults = False
        self.blocked = set()
        self.log("heal: network healed, restarting crashed nodes")
        for n in list(self.nodes.values()):
            if n.raft is None:
                self.restart(n)
            elif n.pending is not None:
                self.fsync_done(n)

    def settle_round(self) -> None:
        """One tick, then deliver everything in FIFO order (bounded)."""
        self.now += 1
        self.tick_all()
        for _ in range(2000):
            if not self.net:
                break
            self.now += 1
            self.deliver(0)

    def check_liveness(self, max_ticks: int = 400) -> int:
        """After heal(): a leader appears and a new write commits on every voter."""
        marker: bytes | None = None
        for t in range(max_ticks):
            self.settle_round()
            ld = self.leader()
            if ld is None or ld.raft is None:
                continue
            r = ld.raft
            cs = r.conf_state
            if cs.voters_outgoing and not cs.auto_leave and t % 5 == 0:
                r.propose_conf_change(ConfChange())
                self.process(ld)
            if marker is None:
                key = 0
                self.next_write += 1
                data = b"k%d=live%d" % (key, self.next_write)
                self.write_key[data] = key
                if r.propose(data):
                    marker = data
                    self.log(f"liveness: proposed {data.decode()} at n{ld.id}")
                self.process(ld)
                continue
            idx = next(
                (
                    i
                    for i in range(len(self.applied_log) - 1, 0, -1)
                    if self.applied_log[i][2] == marker
                ),
                0,
            )
            if not idx:
                if t % 50 == 49:
                    marker = None  # the leader lost it (deposed); propose again
                continue
            members = set(cs.voters) | set(cs.voters_outgoing)
            if all(self.nodes[v].applied >= idx for v in members):
                return t
        raise SafetyError(f"liveness: no progress within {max_ticks} ticks after healing")

    def transcript(self) -> str:
        return "\n".join(self.trace)


def dup(m: Message) -> Message:
    return Message(
        m.type,
        m.to,
        m.frm,
        m.term,
        m.log_term,
        m.index,
        m.entries,
        m.commit,
        m.snapshot,
        m.reject,
        m.reject_hint,
        m.context,
    )


def fmt(m: Message) -> str:
    s = f"{m.type.name} {m.frm}->{m.to} t{m.term}"
    if m.type in (MT.APP, MT.APP_RESP, MT.VOTE, MT.PRE_VOTE):
        s += f" i{m.index} lt{m.log_term}"
    if m.entries:
        s += f" n{len(m.entries)}"
    if m.type in (MT.APP, MT.HEARTBEAT):
        s += f" c{m.commit}"
    if m.reject:
        s += f" REJ h{m.reject_hint}"
    if m.snapshot is not None:
        s += f" snap@{m.snapshot.metadata.index}"
    if m.context:
        s += f" ctx={m.context!r}"
    return s


def fmt_cs(cs: ConfState) -> str:
    s = f"v{list(cs.voters)}"
    if cs.learners:
        s += f" l{list(cs.learners)}"
    if cs.voters_outgoing:
        s += f" out{list(cs.voters_outgoing)}"
    if cs.learners_next:
        s += f" ln{list(cs.learners_next)}"
    return s


def fmt_cc(cc: ConfChange) -> str:
    if not cc.changes:
        return "leave-joint"
    parts = [f"{c.type.name}({c.node_id})" for c in cc.changes]
    return f"{','.join(parts)} {cc.transition.name}"


def run_seed(
    seed: int,
    steps: int = 2000,
    nodes: int | None = None,
    trace_len: int | None = 400,
    mutate: Callable[[Sim], None] | None = None,
) -> Sim:
    """Run one random campaign and the liveness check; raises SafetyError on a bug."""
    rng = random.Random(seed ^ 0x5EED)
    n = nodes if nodes is not None else (3, 5, 7)[seed % 3]
    cfg = SimConfig(
        nodes=n,
        steps=steps,
        pre_vote=rng.random() < 0.8,
        check_quorum=rng.random() < 0.8,
        trace_len=trace_len,
        max_size_per_msg=rng.choice((1, 1, 48, 1 << 20)),
        max_inflight_msgs=rng.choice((1, 4, 64)),
        profile="churn" if rng.random() < 0.5 else "normal",
    )
    sim = Sim(seed, cfg)
    if mutate is not None:
        mutate(sim)
    try:
        sim.run()
        sim.heal()
        sim.check_liveness()
    except Exception as exc:
        exc.sim = sim  # type: ignore[attr-defined]  # the campaign prints its transcript
        raise
    return sim

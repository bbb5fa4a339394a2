"""RaftNode behaviour on a tiny hand-driven network (no faults)."""

from __future__ import annotations

import random
from typing import Any

import pytest

from kvstore.raft import (
    Config,
    Entry,
    HardState,
    Message,
    MessageType,
    RaftNode,
    Ready,
    Role,
    initial_snapshot,
)

MT = MessageType


class Net:
    """Synchronous cluster: persist is instant, every message is delivered."""

    def __init__(self, size: int = 3, **cfg: Any) -> None:
        ids = list(range(1, size + 1))
        snap = initial_snapshot(ids)
        self.nodes = {
            i: RaftNode(
                Config(id=i, **cfg),
                random.Random(i),
                hard_state=HardState(1, 0, 1),
                snapshot=snap,
            )
            for i in ids
        }
        self.readies: dict[int, list[Ready]] = {i: [] for i in ids}
        self.applied: dict[int, list[Entry]] = {i: [] for i in ids}
        self.sent: list[Message] = []

    def flush(self, drop: set[int] | None = None) -> None:
        for _ in range(100):
            queue: list[Message] = []
            for i, n in self.nodes.items():
                while n.has_ready():
                    rd = n.ready()
                    self.readies[i].append(rd)
                    queue += rd.messages + rd.persisted_messages
                    self.applied[i] += rd.committed_entries
                    n.advance(rd)
            if not queue:
                return
            self.sent += queue
            for m in queue:
                if drop and (m.to in drop or m.frm in drop):
                    continue
                self.nodes[m.to].step(m)
        raise AssertionError("did not settle")

    def elect(self, nid: int = 1) -> RaftNode:
        self.nodes[nid].campaign()
        self.flush()
        assert self.nodes[nid].role == Role.LEADER
        return self.nodes[nid]


def test_single_node_elects_itself_and_commits() -> None:
    snap = initial_snapshot([1])
    n = RaftNode(Config(id=1), random.Random(1), hard_state=HardState(1, 0, 1), snapshot=snap)
    for _ in range(20):
        n.tick()
    assert n.role == Role.LEADER and n.term == 2
    assert n.propose(b"a")
    rd = n.ready()
    assert [e.data for e in rd.entries] == [b"", b"a"] and not rd.committed_entries
    n.advance(rd)  # persisted: now our own ack counts
    rd = n.ready()
    assert [e.data for e in rd.committed_entries] == [b"", b"a"]
    assert rd.hard_state == HardState(2, 1, 3)
    n.advance(rd)
    assert not n.has_ready()


def test_ready_twice_without_advance_is_a_bug() -> None:
    n = RaftNode(
        Config(id=1),
        random.Random(1),
        hard_state=HardState(1, 0, 1),
        snapshot=initial_snapshot([1]),
    )
    n.campaign()
    n.ready()
    with pytest.raises(AssertionError):
        n.ready()


def test_message_persistence_tags() -> None:
    net = Net(3, pre_vote=True)
    net.nodes[1].campaign()
    rd = net.nodes[1].ready()
    # Pre-votes change nothing durable: they may leave at once.
    assert {m.type for m in rd.messages} == {MT.PRE_VOTE} and not rd.persisted_messages
    net.nodes[1].advance(rd)
    for m in rd.messages:
        net.nodes[m.to].step(m)
    net.flush()
    leader = net.nodes[1]
    assert leader.role == Role.LEADER
    votes = [rd for rd in net.readies[1] if any(m.type == MT.VOTE for m in rd.persisted_messages)]
    assert votes and votes[0].hard_state is not None and votes[0].hard_state.vote == 1
    assert all(m.type != MT.VOTE for r in net.readies[1] for m in r.messages)
    assert all(m.type != MT.VOTE_RESP for i in (2, 3) for r in net.readies[i] for m in r.messages)
    assert leader.propose(b"x")
    rd = leader.ready()
    # Leader: MsgApp goes out in parallel with its own WAL write (thesis 10.2.1).
    assert rd.entries and {m.type for m in rd.messages} == {MT.APP}
    leader.advance(rd)
    net.nodes[2].step(rd.messages[0])
    frd = net.nodes[2].ready()
    assert frd.entries and [m.type for m in frd.persisted_messages] == [MT.APP_RESP]
    assert not frd.messages


def test_proposals_dropped_without_leader_and_forwarded_with_one() -> None:
    net = Net(3)
    assert not net.nodes[2].propose(b"x")  # no leader known: caller retries
    net.elect(1)
    assert net.nodes[2].propose(b"y")
    rd = net.nodes[2].ready()
    assert [(m.type, m.to) for m in rd.messages] == [(MT.PROP, 1)]
    net.nodes[2].advance(rd)
    for m in rd.messages:
        net.nodes[1].step(m)
    net.flush()
    assert [e.data for e in net.applied[3] if e.data] == [b"y"]


def test_read_index_from_follower_is_batched_and_confirmed() -> None:
    net = Net(3)
    net.elect(1)
    leader = net.nodes[1]
    assert net.nodes[2].read_index(b"a")
    assert net.nodes[3].read_index(b"b")
    assert leader.read_index(b"c")
    net.flush()
    states = {i: [rs for r in net.readies[i] for rs in r.read_states] for i in (1, 2, 3)}
    commit = leader.commit_index
    assert [(s.request_ctx, s.index) for s in states[2]] == [(b"a", commit)]
    assert [(s.request_ctx, s.index) for s in states[3]] == [(b"b", commit)]
    assert [(s.request_ctx, s.index) for s in states[1]] == [(b"c", commit)]
    rounds = {m.context for m in net.sent if m.type == MT.HEARTBEAT and m.context}
    assert len(rounds) <= 2  # the later requests shared one heartbeat round


def test_read_index_needs_a_quorum() -> None:
    net = Net(3)
    net.elect(1)
    assert net.nodes[1].read_index(b"r")
    net.flush(drop={2, 3})
    assert not any(r.read_states for r in net.readies[1][-3:])


def test_leader_transfer() -> None:
    net = Net(3)
    net.elect(1)
    assert net.nodes[1].transfer_leadership(3)
    net.flush()
    assert net.nodes[3].role == Role.LEADER
    assert net.nodes[1].role == Role.FOLLOWER and net.nodes[1].leader_id == 3
    assert any(m.type == MT.TIMEOUT_NOW for m in net.sent)


def test_stale_term_message_does_not_move_term_back() -> None:
    net = Net(3)
    net.elect(1)
    f = net.nodes[2]
    term = f.term
    f.step(Message(MT.APP, to=2, frm=3, term=term - 1, index=1, log_term=1))
    assert f.term == term
    rd = f.ready()
    assert [(m.type, m.term) for m in rd.persisted_messages] == [(MT.APP_RESP, term)]


def test_restart_from_persisted_state() -> None:
    net = Net(3)
    leader = net.elect(1)
    for i in range(5):
        leader.propose(b"v%d" % i)
    net.flush()
    f = net.nodes[2]
    hs = HardState(f.term, f.vote, f.commit_index)
    entries = list(f.log.entries)
    again = RaftNode(
        Config(id=2),
        random.Random(9),
        hard_state=hs,
        snapshot=initial_snapshot([1, 2, 3]),
        entries=entries,
    )
    assert again.term == f.term and again.log.last_index() == f.log.last_index()
    rd = again.ready()  # committed entries are replayed for the state machine
    assert [e.index for e in rd.committed_entries] == list(range(2, f.commit_index + 1))


def _snap_msg(to: int, frm: int, term: int, index: int) -> Message:
    from kvstore.raft import ConfState, Snapshot, SnapshotMetadata

    meta = SnapshotMetadata(index=index, term=term, conf_state=ConfState(voters=(1, 2, 3)))
    return Message(MT.SNAP, to=to, frm=frm, term=term, snapshot=Snapshot(meta, b"state"))


def test_snapshot_arriving_while_a_ready_is_persisted() -> None:
    """Steps between ready() and advance(): a restore must not fake durability."""
    net = Net(3)
    leader = net.elect(1)
    f = net.nodes[2]
    term = leader.term
    last = f.log.last_index()
    f.step(
        Message(
            MT.APP,
            to=2,
            frm=1,
            term=term,
            index=last,
            log_term=term,
            entries=[Entry(term, last + 1, data=b"a")],
            commit=f.commit_index,
        )
    )
    rd = f.ready()  # fsync of entry last+1 in progress...
    assert [e.index for e in rd.entries] == [last + 1] and not rd.committed_entries
    f.step(_snap_msg(2, 1, term, 50))  # ...when a snapshot replaces the log
    f.step(
        Message(
            MT.APP,
            to=2,
            frm=1,
            term=term,
            index=50,
            log_term=term,
            entries=[Entry(term, 51, data=b"b")],
            commit=50,
        )
    )
    f.advance(rd)
    assert f.log.stabled == 50  # only the snapshot point; it is not even durable yet
    rd2 = f.ready()
    assert rd2.snapshot is not None and rd2.snapshot.metadata.index == 50
    assert [e.index for e in rd2.entries] == [51]
    f.advance(rd2)
    assert f.log.stabled == 51 and f.applied_index == 50


def test_snapshot_is_refused_while_committed_entries_are_being_applied() -> None:
    net = Net(3)
    leader = net.elect(1)
    f = net.nodes[2]
    term = leader.term
    last = f.log.last_index()
    f.step(
        Message(
            MT.APP,
            to=2,
            frm=1,
            term=term,
            index=last,
            log_term=term,
            entries=[Entry(term, last + 1, data=b"a")],
            commit=last + 1,
        )
    )
    rd = f.ready()
    assert rd.committed_entries  # the driver is applying these...
    f.step(_snap_msg(2, 1, term, 50))  # ...so the membership must not change under it
    assert f.log.offset < 50
    f.advance(rd)
    out = f.ready()
    resp = [m for m in out.persisted_messages if m.type == MT.APP_RESP]
    assert resp[-1].index == last + 1 and not resp[-1].reject

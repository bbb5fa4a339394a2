"""Targeted protocol scenarios, each a short transcript driven by hand."""

from __future__ import annotations

import pytest

from kvstore.raft import ConfChange, ConfChangeSingle, ConfChangeType, Message, MessageType, Role
from tests.sim.cluster import SafetyError, Sim, dup
from tests.sim.mutants import mutant
from tests.sim.scenario import (
    Allow,
    campaign,
    committed_data,
    is_leader,
    isolate,
    leader_id,
    make,
    node,
    pump,
    put,
    raft,
    rounds,
)

MT = MessageType


def only(*ids: int, no_app: bool = False) -> Allow:
    allowed = set(ids)

    def allow(m: Message) -> bool:
        if no_app and m.type == MT.APP:
            return False
        return m.frm in allowed and m.to in allowed

    return allow


def figure8(sim: Sim, assert_no_old_commit: bool = True) -> None:
    """Raft paper figure 8 with 5 nodes (indexes shifted: index 1 is the bootstrap)."""
    # (a) n1 leads term 2 and replicates X (index 3) to n2 only.
    campaign(sim, 1)
    assert is_leader(sim, 1) and raft(sim, 1).term == 2
    put(sim, 1, 0, "X")
    pump(sim, only(1, 2))
    assert raft(sim, 2).log.last_index() == 3
    # (b) n1 crashes; n5 wins term 3 with n3, n4 and appends Y at index 3 locally only.
    sim.crash(node(sim, 1))
    campaign(sim, 5, only(3, 4, 5, no_app=True))
    assert is_leader(sim, 5) and raft(sim, 5).term == 3
    assert raft(sim, 5).log.term(3) == 3
    # (c) n5 crashes; n1 restarts and wins term 4; X reaches n3 and n4, but not the
    #     term-4 entry after it. Counting replicas would commit X here: it must not.
    sim.crash(node(sim, 5))
    sim.restart(node(sim, 1))

    def c_allow(m: Message) -> bool:
        if m.frm == 5 or m.to == 5:
            return False
        # n3/n4 may reject the first MsgApp (they lack index 3) and then take X, but
        # nothing of term 4 ever reaches them.
        return not (
            m.type == MT.APP
            and m.to in (3, 4)
            and raft(sim, m.to).log.last_index() >= 3
            and any(e.index >= 4 for e in m.entries)
        )

    campaign(sim, 1, c_allow)
    if not is_leader(sim, 1):
        campaign(sim, 1, c_allow)
    assert is_leader(sim, 1) and raft(sim, 1).term == 4
    assert raft(sim, 3).log.term(3) == 2 and raft(sim, 3).log.last_index() == 3
    if assert_no_old_commit:
        assert raft(sim, 1).commit_index < 3, "an older-term entry was committed by counting"
    # (d) n1 crashes; n5 restarts and wins (n3, n4 have last term 2 < 3), replacing X.
    sim.crash(node(sim, 1))
    sim.restart(node(sim, 5))
    allow = only(2, 3, 4, 5)
    for _ in range(3):
        if is_leader(sim, 5):
            break
        campaign(sim, 5, allow)
    assert is_leader(sim, 5)
    pump(sim, allow)
    assert raft(sim, 3).log.term(3) == 3  # Y overwrote the uncommitted X


def test_figure8_old_term_entry_not_committed_by_counting() -> None:
    sim = make(5, pre_vote=False, check_quorum=False, max_size_per_msg=1)
    figure8(sim)
    assert b"k0=X" not in committed_data(sim)
    sim.heal()
    sim.check_liveness()
    # Everyone converged on Y at index 3.
    for n in sim.nodes.values():
        assert n.raft is not None and n.raft.log.term(3) == 3


def test_figure8_mutant_is_caught() -> None:
    sim = make(5, pre_vote=False, check_quorum=False, max_size_per_msg=1)
    # Leave the detection to the simulator's invariant checks (leader completeness).
    with mutant("commit-any-term"), pytest.raises(SafetyError, match="committed index 3"):
        figure8(sim, assert_no_old_commit=False)


def test_partitioned_old_leader_accepts_but_never_commits() -> None:
    sim = make(5, pre_vote=True, check_quorum=False)
    campaign(sim, 1)
    assert is_leader(sim, 1)
    old_term = raft(sim, 1).term
    base_commit = raft(sim, 1).commit_index
    isolate(sim, 1)
    stale = [put(sim, 1, 1, f"stale{i}") for i in range(3)]
    rounds(
        sim,
        100,
        until=lambda: leader_id(sim) not in (0, 1) or any(is_leader(sim, i) for i in range(2, 6)),
    )
    new = next(i for i in range(2, 6) if is_leader(sim, i))
    assert raft(sim, new).term > old_term
    assert is_leader(sim, 1), "without check-quorum the old leader keeps its role"
    stale += [put(sim, 1, 1, f"stale-late{i}") for i in range(3)]  # still "accepted"
    fresh = put(sim, new, 2, "fresh")
    rounds(sim, 5)
    assert raft(sim, 1).commit_index == base_commit
    assert fresh in committed_data(sim)
    sim.blocked.clear()
    rounds(sim, 30, until=lambda: raft(sim, 1).role == Role.FOLLOWER)
    rounds(sim, 10)
    assert not set(stale) & committed_data(sim)
    ld = raft(sim, new)
    assert raft(sim, 1).log.last_index() == ld.log.last_index()
    assert raft(sim, 1).log.last_term() == ld.log.last_term()
    sim.check_liveness()


@pytest.mark.parametrize("pre_vote", [True, False])
def test_rejoining_node_does_not_disrupt_stable_leader(pre_vote: bool) -> None:
    sim = make(3, pre_vote=pre_vote, check_quorum=True)
    campaign(sim, 1)
    rounds(sim, 5)
    assert is_leader(sim, 1)
    term = raft(sim, 1).term
    isolate(sim, 3)
    rounds(sim, 120)  # n3 times out again and again
    sim.blocked.clear()
    rounds(sim, 40)
    if pre_vote:
        # Pre-vote kept n3's term down, so the leader never noticed it was gone.
        assert is_leader(sim, 1) and raft(sim, 1).term == term
        assert raft(sim, 3).term == term and raft(sim, 3).leader_id == 1
    else:
        # Without pre-vote n3's inflated term deposes the healthy leader.
        assert raft(sim, 1).term > term


def test_leader_removes_itself() -> None:
    sim = make(3)
    campaign(sim, 1)
    rounds(sim, 3)
    assert is_leader(sim, 1)
    cc = ConfChange((ConfChangeSingle(ConfChangeType.REMOVE_NODE, 1),))
    assert raft(sim, 1).propose_conf_change(cc)
    sim.process(node(sim, 1))
    rounds(sim, 3, until=lambda: node(sim, 1).conf.voters == (2, 3))
    assert raft(sim, 1).role == Role.FOLLOWER  # stepped down once the removal applied
    assert not raft(sim, 1).propose(b"k0=late")
    rounds(sim, 60, until=lambda: is_leader(sim, 2) or is_leader(sim, 3))
    new = 2 if is_leader(sim, 2) else 3
    assert raft(sim, new).conf_state.voters == (2, 3)
    data = put(sim, new, 0, "after")
    rounds(sim, 3, until=lambda: data in committed_data(sim))
    rounds(sim, 50)
    assert not is_leader(sim, 1)  # a removed node never campaigns


def test_stale_snapshot_delivered_late_is_ignored() -> None:
    sim = make(3)
    campaign(sim, 1)
    rounds(sim, 3)
    isolate(sim, 3)
    for i in range(12):
        put(sim, 1, i % 4, f"w{i}")
    rounds(sim, 2)
    sim.compact(node(sim, 1))  # n3 now needs a snapshot
    snap_index = raft(sim, 1).log.snapshot.metadata.index
    assert raft(sim, 3).log.last_index() < snap_index
    captured: list[Message] = []
    orig_send = sim.send

    def spy(m: Message) -> None:
        if m.type == MT.SNAP and m.to == 3:
            captured.append(dup(m))
        orig_send(m)

    sim.send = spy  # type: ignore[method-assign]
    sim.blocked.clear()
    rounds(sim, 20, until=lambda: node(sim, 3).applied == node(sim, 1).applied)
    assert captured, "the leader should have sent a snapshot"
    for i in range(5):
        put(sim, 1, 0, f"after{i}")
    rounds(sim, 3, until=lambda: node(sim, 3).applied == node(sim, 1).applied)
    r3 = raft(sim, 3)
    before = (r3.commit_index, r3.log.last_index(), node(sim, 3).applied, r3.log.offset)
    assert before[0] > snap_index
    sim.net.clear()
    r3.step(captured[0])  # the old MsgSnap finally arrives
    sim.process(node(sim, 3))
    after = (r3.commit_index, r3.log.last_index(), node(sim, 3).applied, r3.log.offset)
    assert after == before
    resp = [m for m in sim.net if m.type == MT.APP_RESP and m.frm == 3]
    assert resp and resp[0].index == before[0] and not resp[0].reject
    sim.heal()
    sim.check_liveness()

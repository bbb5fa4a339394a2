"""RaftLog and Progress/Inflights/quorum building blocks."""

from __future__ import annotations

import pytest

from kvstore.raft import Entry, Snapshot, SnapshotMetadata
from kvstore.raft.confchange import Membership
from kvstore.raft.log import RaftLog
from kvstore.raft.tracker import (
    Inflights,
    Progress,
    ProgressState,
    VoteResult,
    committed_index,
    vote_result,
)


def ents(*terms: int, start: int = 1) -> list[Entry]:
    return [Entry(t, start + i) for i, t in enumerate(terms)]


def test_append_truncates_conflicting_suffix_and_unstables() -> None:
    lg = RaftLog(Snapshot(), ents(1, 1, 2), committed=1)
    assert lg.stabled == 3 and lg.last_index() == 3
    assert lg.maybe_append(1, 1, 3, ents(3, 3, start=2)) == 3
    assert [e.term for e in lg.entries] == [1, 3, 3]
    assert lg.stabled == 1 and lg.unstable_entries() == ents(3, 3, start=2)
    assert lg.committed == 3  # min(leader commit, last new index)
    assert lg.maybe_append(3, 2, 3, []) is None  # log matching fails


def test_duplicate_append_does_not_truncate() -> None:
    lg = RaftLog(Snapshot(), ents(1, 1, 1), committed=0)
    assert lg.maybe_append(0, 0, 0, ents(1)) == 1
    assert lg.last_index() == 3  # older/duplicate MsgApp must not cut newer entries


def test_commit_only_current_term() -> None:
    lg = RaftLog(Snapshot(), ents(1, 2), committed=0)
    assert not lg.maybe_commit(2, 3)
    assert lg.maybe_commit(2, 2) and lg.committed == 2


def test_find_conflict_by_term() -> None:
    lg = RaftLog(Snapshot(), ents(1, 1, 2, 2, 4, 4), committed=0)
    assert lg.find_conflict_by_term(6, 3) == (4, 2)
    assert lg.find_conflict_by_term(6, 4) == (6, 4)
    assert lg.find_conflict_by_term(2, 0) == (0, 0)


def test_compaction_and_snapshot_restore() -> None:
    snap = Snapshot(SnapshotMetadata(index=5, term=2))
    lg = RaftLog(snap, ents(2, 3, start=6), committed=6)
    assert lg.first_index() == 6 and lg.term(5) == 2 and lg.term(4) is None
    lg.applied = 6
    lg.compact(6)
    assert lg.offset == 6 and lg.term(6) == 2 and lg.term(7) == 3
    lg.restore(Snapshot(SnapshotMetadata(index=10, term=4)))
    assert lg.last_index() == 10 and lg.committed == 10 and lg.snapshot_unstable
    assert lg.slice(11, 11, 0) == []


def test_slice_respects_max_bytes_but_returns_one() -> None:
    big = [Entry(1, i, data=b"x" * 10) for i in range(1, 6)]
    lg = RaftLog(Snapshot(), big, committed=0)
    assert len(lg.slice(1, 6, 25)) == 2
    assert len(lg.slice(1, 6, 1)) == 1
    assert len(lg.slice(1, 6, 0)) == 5


def test_inflights_bounds() -> None:
    inf = Inflights(3, 100)
    inf.add(1, 10)
    inf.add(2, 95)
    assert inf.full()  # by bytes
    inf.free_le(1)
    assert not inf.full() and inf.count() == 1
    inf.add(5, 1)
    inf.add(7, 1)
    assert inf.full()  # by count
    with pytest.raises(AssertionError):
        inf.add(9, 1)


def test_progress_transitions() -> None:
    pr = Progress(10, Inflights(2, 0), False)
    assert pr.state == ProgressState.PROBE and not pr.is_paused()
    pr.sent_entries(3, 0)
    assert pr.is_paused()  # one probe at a time
    assert not pr.maybe_decr_to(5, 3)  # stale: not the index we probed
    assert pr.maybe_decr_to(9, 4) and pr.next == 5 and not pr.is_paused()
    assert pr.maybe_update(6)
    pr.become_replicate()
    assert pr.next == 7
    pr.sent_entries(2, 0)
    pr.sent_entries(2, 0)
    assert pr.next == 11 and pr.inflights.full() and pr.is_paused()
    pr.probe_sent = False  # a heartbeat response allows one empty probe
    assert not pr.is_paused()
    pr.become_snapshot(20)
    assert pr.is_paused()
    pr.become_probe()
    assert pr.next == 21


def test_quorum_math_joint() -> None:
    prs = {i: Progress(1, Inflights(1, 0), False) for i in range(1, 6)}
    for i, match in zip(range(1, 6), (5, 4, 3, 2, 1), strict=True):
        prs[i].match = match
    simple = Membership(frozenset({1, 2, 3}))
    assert committed_index(simple, prs) == 4
    joint = Membership(frozenset({3, 4, 5}), frozenset({1, 2, 3}))
    assert committed_index(joint, prs) == 2
    assert vote_result(joint, {3: True, 4: True}) == VoteResult.PENDING
    assert vote_result(joint, {3: True, 4: True, 1: True}) == VoteResult.WON
    assert vote_result(joint, {4: False, 5: False}) == VoteResult.LOST

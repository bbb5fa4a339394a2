"""Per-follower replication state (Progress), the in-flight window, and quorum math."""

from __future__ import annotations

import enum
from collections import deque

from kvstore.raft.confchange import Membership

__all__ = ["Inflights", "Progress", "ProgressState", "VoteResult", "committed_index", "vote_result"]


class ProgressState(enum.IntEnum):
    PROBE = 0  # don't know the follower's last index; one MsgApp per heartbeat
    REPLICATE = 1  # steady state: pipelined MsgApps, bounded by Inflights
    SNAPSHOT = 2  # a snapshot is on the way; send nothing else


class VoteResult(enum.IntEnum):
    PENDING = 0
    LOST = 1
    WON = 2


class Inflights:
    """Bounded window of MsgApps sent but not acknowledged (by count and by bytes)."""

    __slots__ = ("_q", "bytes", "max_bytes", "max_count")

    def __init__(self, max_count: int, max_bytes: int) -> None:
        assert max_count > 0
        self._q: deque[tuple[int, int]] = deque()  # (last index of the message, payload bytes)
        self.bytes = 0
        self.max_count = max_count
        self.max_bytes = max_bytes  # 0 = unlimited

    def add(self, index: int, nbytes: int) -> None:
        assert not self.full(), "inflights overflow"
        q = self._q
        assert not q or q[-1][0] < index, "inflight indexes must increase"
        q.append((index, nbytes))
        self.bytes += nbytes

    def free_le(self, index: int) -> None:
        """Forget every message whose last index is <= ``index`` (it was acknowledged)."""
        q = self._q
        while q and q[0][0] <= index:
            self.bytes -= q.popleft()[1]

    def full(self) -> bool:
        return len(self._q) >= self.max_count or (
            self.max_bytes > 0 and self.bytes >= self.max_bytes
        )

    def count(self) -> int:
        return len(self._q)

    def reset(self) -> None:
        self._q.clear()
        self.bytes = 0


class Progress:
    """What the leader knows about one peer's log (etcd tracker.Progress)."""

    __slots__ = (
        "inflights",
        "is_learner",
        "match",
        "next",
        "pending_snapshot",
        "probe_sent",
        "recent_active",
        "sent_commit",
        "state",
    )

    def __init__(self, next_index: int, inflights: Inflights, is_learner: bool) -> None:
        self.match = 0
        self.next = next_index
        self.state = ProgressState.PROBE
        self.pending_snapshot = 0
        self.recent_active = True
        self.probe_sent = False  # a MsgApp is outstanding; no more probes until an answer
        self.inflights = inflights
        self.is_learner = is_learner
        self.sent_commit = 0  # highest commit index sent in a MsgApp

    def __repr__(self) -> str:
        return (
            f"Progress(match={self.match}, next={self.next}, state={self.state.name}, "
            f"inflight={self.inflights.count()}, snap={self.pending_snapshot})"
        )

    def _reset_state(self, state: ProgressState) -> None:
        self.probe_sent = False
        self.pending_snapshot = 0
        self.state = state
        self.inflights.reset()

    def become_probe(self) -> None:
        if self.state == ProgressState.SNAPSHOT:
            # The snapshot (if it arrived) moved the follower at least to its index.
            pending = self.pending_snapshot
            self._reset_state(ProgressState.PROBE)
            self.next = max(self.match + 1, pending + 1)
        else:
            self._reset_state(ProgressState.PROBE)
            self.next = self.match + 1

    def become_replicate(self) -> None:
        self._reset_state(ProgressState.REPLICATE)
        self.next = self.match + 1

    def become_snapshot(self, snapshot_index: int) -> None:
        self._reset_state(ProgressState.SNAPSHOT)
        self.pending_snapshot = snapshot_index

    def sent_entries(self, count: int, nbytes: int) -> None:
        """Account for a MsgApp carrying ``count`` entries starting at ``self.next``."""
        if self.state == ProgressState.REPLICATE and count:
            last = self.next + count - 1
            self.next = last + 1  # optimistic: pipelining
            self.inflights.add(last, nbytes)
        # No further empty probes until the follower answers (or a heartbeat does).
        self.probe_sent = True

    def maybe_update(self, n: int) -> bool:
        """Acknowledgement up to ``n``; False if it is stale."""
        updated = False
        if self.match < n:
            self.match = n
            updated = True
            self.probe_sent = False
        if self.next < n + 1:
            self.next = n + 1
        return updated

    def maybe_decr_to(self, rejected: int, match_hint: int) -> bool:
        """Handle a rejected MsgApp at index ``rejected``; False if the rejection is stale."""
        if self.state == ProgressState.REPLICATE:
            if rejected <= self.match:
                return False
            self.next = self.match + 1
            return True
        if self.next - 1 != rejected:
            return False  # answer to an older probe
        self.next = max(min(rejected, match_hint + 1), self.match + 1)
        self.probe_sent = False
        return True

    def is_paused(self) -> bool:
        st = self.state
        if st == ProgressState.PROBE:
            return self.probe_sent
        if st == ProgressState.REPLICATE:
            # Even with a full window, one empty probe per heartbeat round goes out so
            # that a window whose messages were all lost gets noticed (and rewound).
            return self.probe_sent and self.inflights.full()
        return True


def _majority_committed(voters: frozenset[int], progress: dict[int, Progress]) -> int:
    n = len(voters)
    if n == 0:
        return 1 << 63  # an empty half of a joint config does not constrain
    matches = sorted((progress[v].match for v in voters), reverse=True)
    return matches[n // 2]  # the highest index a majority has reached


def committed_index(m: Membership, progress: dict[int, Progress]) -> int:
    """Largest index acknowledged by a quorum (both halves when joint)."""
    c = _majority_committed(m.voters, progress)
    if m.voters_outgoing:
        c = min(c, _majority_committed(m.voters_outgoing, progress))
    return c


def _majority_vote(voters: frozenset[int], votes: dict[int, bool]) -> VoteResult:
    if not voters:
        return VoteResult.WON
    yes = missing = 0
    for v in voters:
        got = votes.get(v)
        if got is None:
            missing += 1
        elif got:
            yes += 1
    q = len(voters) // 2 + 1
    if yes >= q:
        return VoteResult.WON
    if yes + missing >= q:
        return VoteResult.PENDING
    return VoteResult.LOST


def vote_result(m: Membership, votes: dict[int, bool]) -> VoteResult:
    """Outcome of an election (or any yes/no poll) under ``m``."""
    a = _majority_vote(m.voters, votes)
    if not m.voters_outgoing:
        return a
    b = _majority_vote(m.voters_outgoing, votes)
    if a == b:
        return a
    if VoteResult.LOST in (a, b):
        return VoteResult.LOST
    return VoteResult.PENDING

"""Linearizable reads: ReadIndex rounds shared by every read waiting at once.

A read waits for a round of heartbeats that confirms the leader and yields the
commit index, then for this member to apply that index. Reads that arrive
while a round is in flight gather for the next one: one round (one message to
every follower and back) serves them all, and one wake-up per round resolves
them. Both waiting lists are bounded.
"""

from __future__ import annotations

import asyncio
import heapq
import struct
from collections.abc import Callable
from typing import Any, Protocol

from kvstore.errors import (
    LeaderChangedError,
    NoLeaderError,
    RequestError,
    RequestTimeoutError,
    TooManyRequestsError,
)
from kvstore.raft.types import ReadState

MAX_PENDING_READS = 10_000
"""Reads waiting for a read index (queued, in flight, or waiting for a leader)."""
MAX_APPLY_WAITS = 10_000
"""Callers waiting for this member to apply an index."""
BATCH_HOLD_SECONDS = 0.005
"""While a round is in flight, new reads wait for it to end, at most this long."""
READ_GATHER_SECONDS = 0.003
READ_GATHER_READERS = 8
"""With at least this many reads waiting (queued now plus the last round), a round
starts no sooner than READ_GATHER_SECONDS after the one before: a round costs a
heartbeat to every follower and back, so under load more reads share it. Fewer
readers (one client polling) are not delayed."""
LOST_ROUND_ELECTIONS = 2
"""Election timeouts after which a round still unanswered is given up (its leader died)."""
_CONTEXT = struct.Struct(">QQ")  # member id, round number


class ReadIndexer(Protocol):
    def read_index(self, ctx: bytes) -> bool: ...


class ReadRounds:
    """Reads waiting for a read index; the raft loop feeds and resolves them."""

    def __init__(self, member_id: int, limit: int = MAX_PENDING_READS) -> None:
        self.member_id = member_id
        self.limit = limit
        self._new: list[asyncio.Future[int]] = []
        self._inflight: dict[bytes, tuple[list[asyncio.Future[int]], float]] = {}
        self._retry: list[tuple[asyncio.Future[int], float]] = []
        self._pending = 0
        self._seq = 0
        self._sent_at = 0.0
        self._last_round = 0  # reads in the last round sent

    def request(self, loop: asyncio.AbstractEventLoop) -> asyncio.Future[int]:
        """A future of the read index for a read that starts now."""
        if self._pending >= self.limit:
            raise TooManyRequestsError()
        fut: asyncio.Future[int] = loop.create_future()
        self._new.append(fut)
        self._pending += 1
        return fut

    @property
    def waiting(self) -> bool:
        return bool(self._new)

    def feed(self, raft: ReadIndexer, now: float, leader_known: bool, election_s: float) -> float:
        """Start a round if it is time; returns when to look again (0: nothing held)."""
        if self._retry and leader_known:
            self._new.extend(f for f, _ in self._retry if not f.done())
            self._retry.clear()
        if not self._new:
            return 0.0
        hold_until = self._sent_at + BATCH_HOLD_SECONDS
        if self._inflight and now < hold_until:
            return hold_until
        gather_until = self._sent_at + READ_GATHER_SECONDS
        if now < gather_until and len(self._new) + self._last_round >= READ_GATHER_READERS:
            return gather_until
        futs, self._new = self._new, []
        self._last_round = len(futs)
        self._sent_at = now
        self._seq += 1
        ctx = _CONTEXT.pack(self.member_id, self._seq)
        if raft.read_index(ctx):
            self._inflight[ctx] = (futs, now)
        else:
            deadline = now + election_s  # no leader yet: retry once one is known
            self._retry.extend((f, deadline) for f in futs)
        return 0.0

    def resolve(self, states: list[ReadState]) -> None:
        for rs in states:
            entry = self._inflight.pop(rs.request_ctx, None)
            if entry is None:
                continue
            for f in entry[0]:
                self._pending -= 1
                if not f.done():
                    f.set_result(rs.index)

    def expire(self, now: float, election_s: float) -> None:
        """Fail reads that waited too long for a leader, or whose round was lost."""
        if self._retry:
            keep = []
            for f, deadline in self._retry:
                if deadline <= now:
                    self._fail(f, NoLeaderError())
                else:
                    keep.append((f, deadline))
            self._retry = keep
        if self._inflight:
            # A round whose leader died never completes: fail it after a while.
            limit = now - LOST_ROUND_ELECTIONS * election_s
            for ctx, (futs, started) in list(self._inflight.items()):
                if started < limit:
                    del self._inflight[ctx]
                    for f in futs:
                        self._fail(f, LeaderChangedError())

    def _fail(self, fut: asyncio.Future[int], error: RequestError) -> None:
        self._pending -= 1
        if not fut.done():
            fut.set_exception(error)

    def fail_all(self, error: RequestError) -> None:
        for f in self._new:
            self._fail(f, error)
        for f, _ in self._retry:
            self._fail(f, error)
        for futs, _ in self._inflight.values():
            for f in futs:
                self._fail(f, error)
        self._new, self._retry = [], []
        self._inflight.clear()


AppliedCallback = Callable[[RequestError | None], Any]


class ApplyWaits:
    """Callbacks waiting for an index to be applied here, lowest index first."""

    def __init__(self, limit: int = MAX_APPLY_WAITS) -> None:
        self.limit = limit
        self._heap: list[tuple[int, int, float, AppliedCallback]] = []
        self._seq = 0

    def __len__(self) -> int:
        return len(self._heap)

    def call_when_applied(self, index: int, deadline: float, callback: AppliedCallback) -> None:
        """``callback(None)`` once ``index`` is applied, or ``callback(error)`` if not by
        ``deadline`` (or never)."""
        if len(self._heap) >= self.limit:
            raise TooManyRequestsError()
        self._seq += 1
        heapq.heappush(self._heap, (index, self._seq, deadline, callback))

    def applied(self, index: int) -> None:
        heap = self._heap
        while heap and heap[0][0] <= index:
            heapq.heappop(heap)[3](None)

    def expire(self, now: float) -> None:
        if not self._heap or all(deadline > now for _, _, deadline, _ in self._heap):
            return
        keep = []
        for entry in self._heap:
            if entry[2] <= now:
                entry[3](RequestTimeoutError())
            else:
                keep.append(entry)
        heapq.heapify(keep)
        self._heap = keep

    def fail_all(self, error: RequestError) -> None:
        heap, self._heap = self._heap, []
        for entry in heap:
            entry[3](error)

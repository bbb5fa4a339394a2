"""Proposals waiting to be replicated and applied: their futures, bounded, failed together.

Each proposal is registered under the request id its entry carries; the raft
loop resolves it when it applies the entry. The registry is bounded in count
and in bytes (etcd refuses with "too many requests" past its own limits), and
expires requests on the loop's ticks rather than with a timer each.
"""

from __future__ import annotations

import asyncio
import collections
from typing import Any

from kvstore.errors import RequestError, RequestTimeoutError, TooManyRequestsError

MAX_PENDING_PROPOSALS = 10_000
"""Proposals this member holds waiting for their entry to apply."""
MAX_PENDING_PROPOSAL_BYTES = 64 * 1024 * 1024
"""Bytes of those proposals (Raft's own bound on uncommitted entries is the same)."""


class Waiter:
    """One proposal: its encoded entry and the future its caller awaits."""

    __slots__ = ("data", "deadline", "future", "no_leader_deadline", "proposed", "request_id")

    def __init__(
        self, request_id: int, data: bytes, future: asyncio.Future[Any], deadline: float
    ) -> None:
        self.request_id = request_id
        self.data = data
        self.future = future
        self.deadline = deadline
        """Monotonic time at which the caller is told the request timed out."""
        self.proposed = False
        """Handed to Raft (it may commit even if this member loses track of it)."""
        self.no_leader_deadline = 0.0


class WaiterRegistry:
    """Waiters by request id, in the order they came (which is their deadlines' order)."""

    def __init__(
        self,
        max_count: int = MAX_PENDING_PROPOSALS,
        max_bytes: int = MAX_PENDING_PROPOSAL_BYTES,
    ) -> None:
        self.max_count = max_count
        self.max_bytes = max_bytes
        self._by_id: dict[int, Waiter] = {}
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._by_id)

    def add(self, waiter: Waiter) -> None:
        """Register ``waiter``; refuse it when the member already holds too much."""
        if len(self._by_id) >= self.max_count or self._bytes + len(waiter.data) > self.max_bytes:
            raise TooManyRequestsError()
        assert waiter.request_id not in self._by_id, "request ids are unique"
        self._by_id[waiter.request_id] = waiter
        self._bytes += len(waiter.data)

    def pop(self, request_id: int) -> Waiter | None:
        waiter = self._by_id.pop(request_id, None)
        if waiter is not None:
            self._bytes -= len(waiter.data)
        return waiter

    def resolve(self, request_id: int, result: object) -> None:
        """The entry of ``request_id`` was applied with ``result`` (a response or an error)."""
        waiter = self.pop(request_id)
        if waiter is None or waiter.future.done():
            return
        if isinstance(result, RequestError):
            waiter.future.set_exception(result)
        else:
            waiter.future.set_result(result)

    def fail_proposed(self, error: RequestError) -> None:
        """Fail those handed to Raft (a new leader may have dropped them): the caller
        cannot know whether they will still commit, as with a timeout."""
        for waiter in list(self._by_id.values()):
            if waiter.proposed:
                self.pop(waiter.request_id)
                if not waiter.future.done():
                    waiter.future.set_exception(error)

    def expire(self, now: float) -> int:
        """Fail waiters past their deadline; returns how many."""
        expired = 0
        for waiter in list(self._by_id.values()):
            if waiter.deadline > now:
                break  # registered in deadline order
            self.pop(waiter.request_id)
            if not waiter.future.done():
                waiter.future.set_exception(RequestTimeoutError())
                expired += 1
        return expired

    def fail_all(self, error: RequestError) -> None:
        for waiter in list(self._by_id.values()):
            if not waiter.future.done():
                waiter.future.set_exception(error)
        self._by_id.clear()
        self._bytes = 0


class ProposalQueue:
    """Proposals registered but not yet handed to Raft, and those waiting for a leader."""

    def __init__(self) -> None:
        self.queue: collections.deque[Waiter] = collections.deque()
        self.no_leader: collections.deque[Waiter] = collections.deque()

    def __bool__(self) -> bool:
        return bool(self.queue)

    def take(self, limit: int) -> list[Waiter]:
        """Up to ``limit`` proposals whose callers still wait, oldest first."""
        batch: list[Waiter] = []
        queue = self.queue
        while queue and len(batch) < limit:
            waiter = queue.popleft()
            if not waiter.future.done():
                batch.append(waiter)
        return batch

    def retry_when_led(self, batch: list[Waiter], deadline: float) -> None:
        """Raft dropped ``batch`` (no leader yet): keep it until one is known or ``deadline``."""
        for waiter in batch:
            waiter.no_leader_deadline = deadline
        self.no_leader.extend(batch)

    def leader_known(self) -> None:
        if self.no_leader:
            self.queue.extendleft(reversed(self.no_leader))
            self.no_leader.clear()

    def expire_leaderless(self, now: float, error: RequestError) -> int:
        failed = 0
        no_leader = self.no_leader
        while no_leader and no_leader[0].no_leader_deadline <= now:
            waiter = no_leader.popleft()
            if not waiter.future.done():
                waiter.future.set_exception(error)
                failed += 1
        return failed

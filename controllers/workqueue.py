"""A rate-limited, deduplicating work queue with client-go's semantics.

- An item is queued at most once (``dirty``); adding it again while queued
  is a no-op.
- An item being processed (between :meth:`WorkQueue.get` and
  :meth:`WorkQueue.done`) is never handed to a second worker; if it is added
  meanwhile it is queued again when ``done`` is called.
- :meth:`WorkQueue.add_rate_limited` delays an item by its own exponential
  backoff (``base * 2**failures`` capped at ``max_delay``);
  :meth:`WorkQueue.forget` resets it after a success.
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from collections.abc import Hashable
from typing import Generic, TypeVar

import anyio

T = TypeVar("T", bound=Hashable)

MAX_WAITING = 100_000  # bound on delayed items


class ShutDown(Exception):
    """The queue was shut down; workers should return."""


class ExponentialBackoff(Generic[T]):
    """Per-item exponential failure backoff (client-go's ItemExponentialFailureRateLimiter)."""

    def __init__(self, base: float = 0.005, max_delay: float = 1000.0) -> None:
        self.base = base
        self.max_delay = max_delay
        self._failures: dict[T, int] = {}

    def when(self, item: T) -> float:
        failures = self._failures.get(item, 0)
        self._failures[item] = failures + 1
        return min(self.base * 2.0**failures, self.max_delay)

    def forget(self, item: T) -> None:
        self._failures.pop(item, None)

    def num_requeues(self, item: T) -> int:
        return self._failures.get(item, 0)


class WorkQueue(Generic[T]):
    def __init__(self, rate_limiter: ExponentialBackoff[T] | None = None) -> None:
        self.rate_limiter: ExponentialBackoff[T] = rate_limiter or ExponentialBackoff()
        self._queue: deque[T] = deque()
        self._dirty: set[T] = set()
        self._processing: set[T] = set()
        self._waiting: list[tuple[float, int, T]] = []  # heap of (ready at, seq, item)
        self._seq = itertools.count()
        self._changed = anyio.Event()
        self._shutting_down = False

    def __len__(self) -> int:
        return len(self._queue)

    def _wake(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    def add(self, item: T) -> None:
        if self._shutting_down or item in self._dirty:
            return
        self._dirty.add(item)
        if item in self._processing:
            return  # queued again by done()
        self._queue.append(item)
        self._wake()

    def add_after(self, item: T, delay: float) -> None:
        if self._shutting_down:
            return
        if delay <= 0:
            self.add(item)
            return
        assert len(self._waiting) < MAX_WAITING, "too many delayed items"
        heapq.heappush(self._waiting, (anyio.current_time() + delay, next(self._seq), item))
        self._wake()

    def add_rate_limited(self, item: T) -> None:
        self.add_after(item, self.rate_limiter.when(item))

    def forget(self, item: T) -> None:
        self.rate_limiter.forget(item)

    def num_requeues(self, item: T) -> int:
        return self.rate_limiter.num_requeues(item)

    def _promote_ready(self) -> float | None:
        """Move delayed items that are due into the queue; the delay until the next one."""
        now = anyio.current_time()
        while self._waiting and self._waiting[0][0] <= now:
            _, _, item = heapq.heappop(self._waiting)
            self.add(item)
        return self._waiting[0][0] - now if self._waiting else None

    async def get(self) -> T:
        """The next item; the caller must call :meth:`done` with it. Raises ShutDown."""
        while True:
            if self._shutting_down:
                raise ShutDown
            next_due = self._promote_ready()
            if self._queue:
                item = self._queue.popleft()
                self._processing.add(item)
                self._dirty.discard(item)
                return item
            changed = self._changed
            if next_due is None:
                await changed.wait()
            else:
                with anyio.move_on_after(next_due):
                    await changed.wait()

    def done(self, item: T) -> None:
        self._processing.discard(item)
        if item in self._dirty:
            self._queue.append(item)
            self._wake()

    def shut_down(self) -> None:
        self._shutting_down = True
        self._wake()

    @property
    def shutting_down(self) -> bool:
        return self._shutting_down

"""Streamed responses take the event loop in slices, behind everything else.

A stream with much to send (a watch fanning one write out to thousands of
watchers) would otherwise run message after message without suspending, and
every request that arrives meanwhile waits for it: the loop is first come,
first served. Here streams send at most ``SLICE_MESSAGES`` messages between
two turns of the loop, all streams together; a stream past the slice waits
for the next one, in order of arrival. A slice opens one turn after the last
one closed, so whatever became ready meanwhile (a request, a Raft message)
runs before the next slice. With nothing else to do the loop turns fast, and
the streams get nearly all of it.
"""

from __future__ import annotations

import asyncio
from collections import deque

SLICE_MESSAGES = 16
"""Streamed messages sent per turn of the loop, all streams together (µs each)."""


class StreamTurns:
    """The slices of the loop that streamed responses share (one per server)."""

    def __init__(self, slice_messages: int = SLICE_MESSAGES) -> None:
        assert slice_messages > 0
        self._slice_messages = slice_messages
        self._left = slice_messages
        self._waiting: deque[asyncio.Future[None]] = deque()
        self._reopen: asyncio.Handle | None = None

    async def turn(self) -> None:
        """Return when the caller may send its next message (at once while the slice lasts)."""
        if self._left > 0 and not self._waiting:
            self._left -= 1
            return
        loop = asyncio.get_running_loop()
        waiter = loop.create_future()
        self._waiting.append(waiter)
        if self._reopen is None:
            self._reopen = loop.call_soon(self._open_slice)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self._left += 1  # the turn handed to us goes to someone else
            elif waiter in self._waiting:
                self._waiting.remove(waiter)
            raise

    def _open_slice(self) -> None:
        self._reopen = None
        self._left = self._slice_messages
        while self._waiting and self._left > 0:
            waiter = self._waiting.popleft()
            if not waiter.done():
                waiter.set_result(None)
                self._left -= 1
        if self._waiting:
            # The rest wait for the next slice, one turn of the loop from now.
            self._reopen = asyncio.get_running_loop().call_soon(self._open_slice)

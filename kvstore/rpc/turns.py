"""Streamed responses take the event loop in slices, behind everything else.

A stream with much to send (a watch fanning one write out to thousands of
watchers) would otherwise run message after message without suspending, and
every request that arrives meanwhile waits for it: the loop is first come,
first served. Here streams send at most a slice of ``SLICE_UNITS`` between
two turns of the loop, all streams together (a message costs a unit per
started KiB: building and writing a large one takes longer); a stream past
the slice waits for the next one, in order of arrival; one that sent a large
message pays for it out of the slices that follow. A slice opens one turn after the last
one closed, so whatever became ready meanwhile (a request, a Raft message)
runs before the next slice. With nothing else to do the loop turns fast, and
the streams get nearly all of it.
"""

from __future__ import annotations

import asyncio
from collections import deque

SLICE_UNITS = 16
"""What streams may send per turn of the loop, all together: 16 small messages (tens
of µs each), or fewer larger ones."""
UNIT_BYTES = 1024


class StreamTurns:
    """The slices of the loop that streamed responses share (one per server)."""

    def __init__(self, slice_units: int = SLICE_UNITS) -> None:
        assert slice_units > 0
        self._slice_units = slice_units
        self._left = slice_units
        self._waiting: deque[tuple[asyncio.Future[None], int]] = deque()
        self._reopen: asyncio.Handle | None = None

    async def turn(self, sent_bytes: int = 0) -> None:
        """Account for a message of ``sent_bytes`` just sent; return when the caller may
        send its next one (at once while the slice lasts)."""
        cost = 1 + sent_bytes // UNIT_BYTES
        if self._left > 0 and not self._waiting:
            self._left -= cost
            return
        loop = asyncio.get_running_loop()
        waiter = loop.create_future()
        self._waiting.append((waiter, cost))
        if self._reopen is None:
            self._reopen = loop.call_soon(self._open_slice)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self._left += cost  # what was counted for us goes to someone else
            else:
                self._waiting = deque(w for w in self._waiting if w[0] is not waiter)
            raise

    def _open_slice(self) -> None:
        self._reopen = None
        # A debt (a large message sent) is paid out of this slice first.
        self._left = min(self._left + self._slice_units, self._slice_units)
        while self._waiting and self._left > 0:
            waiter, cost = self._waiting.popleft()
            if not waiter.done():
                waiter.set_result(None)
                self._left -= cost
        if self._waiting or self._left <= 0:
            # The rest wait for the next slice, one turn of the loop from now.
            self._reopen = asyncio.get_running_loop().call_soon(self._open_slice)

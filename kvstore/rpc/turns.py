"""Streamed responses take the event loop in slices, behind everything else.

A stream with much to send (a watch fanning one write out to thousands of
watchers) would otherwise send message after message without suspending, and
every request that arrives meanwhile waits for it: the loop is first come,
first served. Here all streams together send at most a slice of
``SLICE_UNITS`` per turn of the loop (a message costs a unit per started KiB:
a large one takes longer to build and write). A stream that finds the slice
used up, or others already waiting, waits for the next slice in order of
arrival; a message larger than what was left is paid for out of the slices
that follow. The next slice opens one turn of the loop later, so whatever
became ready meanwhile (a request, a Raft message) runs first.

The common case costs one counter update per message: a stream only suspends
when the slice is used up.
"""

from __future__ import annotations

import asyncio
from collections import deque

SLICE_UNITS = 64
"""What streams may send per turn of the loop, all together: 64 small messages (some
µs each) or fewer large ones. Measured (``kvstore bench``, before watch replies shared
their encoding): beside 10,000 never-read watchers a bystander's p50 was 3.8-4.3 ms
with 64 and 4.1-5.3 ms with 128 (quiet 2.2 ms); ordinary watch traffic (watch@200) cost
the leader the same CPU per put."""
UNIT_BYTES = 1024


class StreamTurns:
    """The slices of the loop that streamed responses share (one per server)."""

    def __init__(self, slice_units: int = SLICE_UNITS) -> None:
        assert slice_units > 0
        self._slice_units = slice_units
        self._left = slice_units
        self._counting = False  # a slice is being spent: it ends with this turn of the loop
        self._waiting: deque[asyncio.Future[None]] = deque()

    def spend(self, sent_bytes: int) -> bool:
        """Count a message of ``sent_bytes`` just sent. True: the caller must ``await
        next_slice()`` before its next message."""
        self._left -= 1 + sent_bytes // UNIT_BYTES
        if not self._counting:
            self._end_slice_after_this_turn()
        return self._left <= 0 or bool(self._waiting)

    async def next_slice(self) -> None:
        """Wait for a turn in a later slice, behind the streams that waited first."""
        waiter = asyncio.get_running_loop().create_future()
        self._waiting.append(waiter)
        if not self._counting:
            self._end_slice_after_this_turn()
        try:
            await waiter
        except asyncio.CancelledError:
            if not waiter.done():
                self._waiting.remove(waiter)
            raise

    def _open_slice(self) -> None:
        self._counting = False
        # A debt (a large message sent) is paid out of this slice first.
        self._left = min(self._left + self._slice_units, self._slice_units)
        # Each stream let go sends at least one message (a unit): no more than fit.
        for _ in range(max(0, self._left)):
            if not self._waiting:
                break
            waiter = self._waiting.popleft()
            if not waiter.done():
                waiter.set_result(None)
        if self._waiting and not self._counting:
            # The rest wait for the next slice, one turn of the loop from now.
            self._end_slice_after_this_turn()

    def _end_slice_after_this_turn(self) -> None:
        self._counting = True
        asyncio.get_running_loop().call_soon(self._open_slice)

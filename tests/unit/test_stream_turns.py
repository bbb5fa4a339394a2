"""Streamed responses share the event loop in slices and wait behind other work."""

from __future__ import annotations

import asyncio

from kvstore.rpc.turns import StreamTurns


async def test_streams_send_in_slices_and_requests_get_a_turn_between() -> None:
    turns = StreamTurns(slice_messages=4)
    sent: list[str] = []

    async def stream(name: str) -> None:
        for _ in range(20):
            await turns.turn()
            sent.append(name)  # one message sent

    progress: list[int] = []

    async def request() -> None:
        # A request that needs a few turns of the loop (decode, propose, apply, answer).
        for _ in range(6):
            await asyncio.sleep(0)
            progress.append(len(sent))

    names = "abcdefgh"
    await asyncio.gather(*(stream(name) for name in names), request())
    assert sorted(sent) == sorted(names * 20)
    # Between two turns of the request, the streams together sent at most a slice (a
    # stream suspending after each message would let all eight send one).
    steps = [later - earlier for earlier, later in zip([0, *progress], progress, strict=False)]
    assert max(steps) <= 4, steps
    # Every stream gets turns: none is starved by the others.
    assert set(sent[:16]) == set(names), sent[:16]


async def test_a_cancelled_waiter_gives_its_turn_back() -> None:
    turns = StreamTurns(slice_messages=1)
    await turns.turn()  # the slice is used up
    waiting = asyncio.ensure_future(turns.turn())
    await asyncio.sleep(0)
    waiting.cancel()
    await asyncio.gather(waiting, return_exceptions=True)
    # The next caller is not held up by the cancelled one.
    await asyncio.wait_for(turns.turn(), timeout=10)

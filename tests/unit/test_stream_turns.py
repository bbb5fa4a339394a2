"""Streamed responses share the event loop in slices and wait behind other work."""

from __future__ import annotations

import asyncio

from kvstore.rpc.turns import UNIT_BYTES, StreamTurns


async def _send(turns: StreamTurns, sent: list[str], name: str, messages: int) -> None:
    """A stream's sender as the connection runs it: send, count, wait when told."""
    for _ in range(messages):
        sent.append(name)
        if turns.spend(0):
            await turns.next_slice()


async def test_streams_send_in_slices_and_requests_get_a_turn_between() -> None:
    turns = StreamTurns(slice_units=4)
    sent: list[str] = []
    progress: list[int] = []

    async def request() -> None:
        # A request that needs a few turns of the loop (decode, propose, apply, answer).
        for _ in range(6):
            await asyncio.sleep(0)
            progress.append(len(sent))

    names = "abcdefgh"
    await asyncio.gather(*(_send(turns, sent, name, 20) for name in names), request())
    assert sorted(sent) == sorted(names * 20)
    # Between two turns of the request, the streams together sent at most a slice plus
    # the first message of each stream started meanwhile (a stream that never suspended
    # would send all 20 of its messages at once).
    steps = [later - earlier for earlier, later in zip([0, *progress], progress, strict=False)]
    assert max(steps) <= 4 + len(names), steps
    assert max(steps[1:]) <= 4, steps
    # Every stream gets turns: none is starved by the others.
    assert set(sent[:24]) == set(names), sent[:24]


async def test_a_large_message_is_paid_for_by_the_slices_after_it() -> None:
    turns = StreamTurns(slice_units=4)
    assert turns.spend(3 * 4 * UNIT_BYTES)  # 13 units: three slices' worth of debt
    turns_waited = 0
    waiter = asyncio.ensure_future(turns.next_slice())
    while not waiter.done():
        await asyncio.sleep(0)
        turns_waited += 1
    assert turns_waited >= 3, turns_waited


async def test_a_cancelled_waiter_gives_its_place_back() -> None:
    turns = StreamTurns(slice_units=1)
    assert turns.spend(0)  # the slice is used up
    waiting = asyncio.ensure_future(turns.next_slice())
    await asyncio.sleep(0)
    waiting.cancel()
    await asyncio.gather(waiting, return_exceptions=True)
    # The next caller is not held up by the cancelled one.
    await asyncio.wait_for(turns.next_slice(), timeout=10)

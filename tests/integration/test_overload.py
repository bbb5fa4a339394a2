"""A member flooded with proposals while its apply is slow refuses the excess
("etcdserver: too many requests") instead of queueing without bound, and serves again."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import anyio

from kvstore._pb.etcdserverpb import rpc_pb2
from kvstore.errors import TooManyRequestsError
from kvstore.raft.types import Role
from kvstore.rpc.status import StatusCode
from kvstore.server.bootstrap import bootstrap
from kvstore.server.config import ServerConfig
from kvstore.server.node import Node
from kvstore.server.status import to_status
from tests.integration.inprocess import single_member_config

LIMIT = 300
BURST = 2 * LIMIT
"""Proposals submitted at once: more than the member may hold, whatever it applied."""
FLOOD = 3 * BURST
APPLY_DELAY_SECONDS = 0.002


def _config(tmp_path: Path) -> ServerConfig:
    return single_member_config(tmp_path, heartbeat_ms=20, election_ms=200)


async def test_flood_while_apply_is_slow_is_refused_not_queued(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    node = Node(cfg, bootstrap(cfg), lambda msgs: None, max_pending_proposals=LIMIT)
    apply_entry = node.applier.apply

    def slow_apply(index: int, data: bytes) -> tuple[int, object]:
        time.sleep(APPLY_DELAY_SECONDS)  # a slow disk or a huge txn: the loop is held up
        return apply_entry(index, data)

    node.applier.apply = slow_apply  # type: ignore[method-assign]
    tasks = [asyncio.create_task(node.run()), asyncio.create_task(node.run_ticker())]
    try:
        with anyio.fail_after(60):
            while node.role != Role.LEADER:
                await node.leader_changed.wait()
            accepted: list[asyncio.Future[Any]] = []
            refused: list[TooManyRequestsError] = []
            most_pending = 0
            for i in range(FLOOD):
                try:
                    accepted.append(node.submit(rpc_pb2.PutRequest(key=b"k%d" % i, value=b"v")))
                except TooManyRequestsError as exc:
                    refused.append(exc)
                most_pending = max(most_pending, node.pending_proposals)
                if i % BURST == BURST - 1:
                    await asyncio.sleep(0)  # between bursts the loop applies a little
            assert refused, "nothing was refused"
            assert most_pending <= LIMIT
            assert to_status(refused[0]) == (
                StatusCode.RESOURCE_EXHAUSTED,
                "etcdserver: too many requests",
            )
            responses = await asyncio.gather(*accepted)
            assert [r.header.revision for r in responses] == list(range(2, 2 + len(accepted)))
            # The flood is over: the member serves again.
            node.applier.apply = apply_entry  # type: ignore[method-assign]
            resp = await node.propose(rpc_pb2.PutRequest(key=b"after", value=b"v"))
            assert resp.header.revision == 2 + len(accepted)
            assert node.pending_proposals == 0
    finally:
        node.stop()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def test_ticks_follow_the_clock_on_uvloop(tmp_path: Path) -> None:
    """uvloop fires timers early (it rounds their delays down to milliseconds): the ticker
    must not count a tick for a wake-up before its interval (a storm of ticks makes
    followers call elections needlessly)."""
    import uvloop

    cfg = _config(tmp_path)
    node = Node(cfg, bootstrap(cfg), lambda msgs: None)
    interval = cfg.heartbeat_ms / 1000
    counted = 0

    async def count() -> float:
        nonlocal counted
        ticker = asyncio.create_task(node.run_ticker())
        started = time.monotonic()
        while time.monotonic() - started < 1.0:
            await asyncio.sleep(0.0003)  # between ticks: read what the ticker owes
            counted += node._ticks
            node._ticks = 0
        elapsed = time.monotonic() - started
        node.stop()
        await ticker
        return elapsed

    elapsed = uvloop.run(count())
    assert 0 < counted <= elapsed / interval + 1, (counted, elapsed)

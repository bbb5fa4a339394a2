"""Raft-level rules of membership changes, seen through one member's node driver."""

from __future__ import annotations

import asyncio
from pathlib import Path

from kvstore.raft.types import ConfChange, ConfChangeSingle, ConfChangeType, Role
from kvstore.server.bootstrap import bootstrap
from kvstore.server.node import Node
from tests.integration.inprocess import single_member_config


def _learner(node_id: int) -> ConfChange:
    return ConfChange((ConfChangeSingle(ConfChangeType.ADD_LEARNER_NODE, node_id),))


async def test_a_change_while_another_is_pending_is_dropped(tmp_path: Path) -> None:
    cfg = single_member_config(tmp_path, heartbeat_ms=20, election_ms=200)
    node = Node(cfg, bootstrap(cfg), lambda msgs: None)
    applied: list[int] = []
    applied_one = asyncio.Event()

    def on_conf_change(index: int, cc: ConfChange) -> None:
        applied.append(cc.changes[0].node_id)
        applied_one.set()

    node.on_conf_change = on_conf_change
    tasks = [asyncio.create_task(node.run()), asyncio.create_task(node.run_ticker())]
    try:
        async with asyncio.timeout(30):
            while node.role != Role.LEADER:
                await node.leader_changed.wait()
            # Both reach Raft in the same batch: the second finds the first pending.
            first, second = await asyncio.gather(
                node.propose_conf_change(_learner(99)), node.propose_conf_change(_learner(98))
            )
            assert (first, second) == (True, False)
            await applied_one.wait()
            assert applied == [99]
            # Once the first is applied, the next change goes through.
            assert await node.propose_conf_change(_learner(98))
    finally:
        node.stop()
        await tasks[0]
        tasks[1].cancel()

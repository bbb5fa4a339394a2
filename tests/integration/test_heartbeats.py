"""A member held up by its own work keeps its leader: time it could not listen in does
not count as silence from its peers; and one huge request does not hold it up at all.

Holding every member of a cluster up at once is what one huge entry does (etcdctl check
perf ends by deleting its 60,000 keys in one request, which every member applies on its
loop): the leader hears nothing while it applies, and neither do the followers.
SIGSTOP on all three is the same stall without the minute of load it takes to build.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import anyio

from kvstore._pb.etcdserverpb import rpc_pb2
from kvstore.client import Client
from kvstore.local.cluster import KVCluster
from kvstore.mvcc import open_store
from kvstore.raft.types import Role
from kvstore.server.bootstrap import bootstrap
from kvstore.server.config import ServerConfig
from kvstore.server.node import Node
from tests.integration.inprocess import single_member_config

STALL_SECONDS = 3.0
"""Three election timeouts (1 s by default): a leader counting the stall would step down."""


async def _leader_and_terms(client: Client, endpoints: list[str]) -> tuple[set[int], set[int]]:
    leaders, terms = set(), set()
    for ep in endpoints:
        st = await client.status(ep)
        leaders.add(st.leader)
        terms.add(st.raftTerm)
    return leaders, terms


async def test_whole_cluster_held_up_keeps_its_leader(tmp_path: Path) -> None:
    c = KVCluster(root=tmp_path / "kv3", size=3)
    c.start()
    try:
        async with Client(c.endpoints, default_timeout=15) as client:
            with anyio.fail_after(30):
                while True:  # the publication of every member's attributes is done
                    leaders, terms = await _leader_and_terms(client, c.endpoints)
                    if len(leaders) == 1 and 0 not in leaders and len(terms) == 1:
                        break
                    await anyio.sleep(0.1)
            await client.put("/hb/before", "x")
            for i in range(3):
                c.pause(i)
            try:
                await anyio.sleep(STALL_SECONDS)  # the stall itself, not a wait for an event
            finally:
                for i in range(3):
                    c.resume(i)
            # Writes go on across the first election timeout after the stall: a member
            # that counted the stall would have stepped down or campaigned by now.
            with anyio.fail_after(30):
                for i in range(20):
                    await client.put(f"/hb/after/{i}", "x")
                    await anyio.sleep(0.1)
            assert await _leader_and_terms(client, c.endpoints) == (leaders, terms)
            for m in c.members:
                assert "the loop was held up" in m.log_path.read_text()
    finally:
        c.stop()


KEYS = 60_000
"""As many as etcdctl check perf --load m leaves for its final delete."""


def _config(tmp_path: Path) -> ServerConfig:
    return single_member_config(tmp_path)


def _fill_requests() -> list[rpc_pb2.TxnRequest]:
    txns = []
    for start in range(0, KEYS, 128):
        txn = rpc_pb2.TxnRequest()
        for i in range(start, min(KEYS, start + 128)):
            txn.success.add().request_put.CopyFrom(
                rpc_pb2.PutRequest(key=b"/perf/%08d" % i, value=b"v")
            )
        txns.append(txn)
    return txns


DELETE = rpc_pb2.DeleteRangeRequest(key=b"/perf/", range_end=b"/perf0")
COUNT = rpc_pb2.RangeRequest(key=b"/perf/", range_end=b"/perf0", count_only=True)


async def test_a_huge_delete_is_applied_in_slices_between_which_the_loop_serves(
    tmp_path: Path,
) -> None:
    node = Node(_config(tmp_path / "node"), bootstrap(_config(tmp_path / "node")), lambda m: None)
    tasks = [asyncio.create_task(node.run()), asyncio.create_task(node.run_ticker())]
    try:
        with anyio.fail_after(120):
            while node.role != Role.LEADER:
                await node.leader_changed.wait()
            for txn in _fill_requests():
                await node.propose(txn)
            seen_during: list[int] = []
            turns = 0

            async def probe() -> None:
                # Runs whenever the loop is free: while the delete is half applied,
                # readers must see every key (the delete's revision is not current yet).
                nonlocal turns
                while True:
                    turns += 1
                    if node.store.write_suspended:
                        seen_during.append(node.store.range(COUNT).count)
                    await asyncio.sleep(0.002)

            prober = asyncio.create_task(probe())
            deleted = await node.propose(DELETE)
            prober.cancel()
            assert deleted.deleted == KEYS
            assert node.store.range(COUNT).count == 0
            assert len(seen_during) >= 2, (len(seen_during), turns)  # (none when at once)
            assert set(seen_during) == {KEYS}
            ours = node.store.hash_kv()
    finally:
        node.stop()
        await asyncio.gather(*tasks, return_exceptions=True)
    # Applied in slices or at once, the same request leaves the same bytes.
    store, _ = open_store(tmp_path / "plain")
    for index, txn in enumerate(_fill_requests(), 1):
        store.apply(index, txn)
    store.apply(len(_fill_requests()) + 1, DELETE)
    assert store.hash_kv() == ours
    store.close()

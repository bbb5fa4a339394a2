"""A member held up by its own work keeps its leader: time it could not listen in does
not count as silence from its peers.

Holding every member of a cluster up at once is what one huge entry does (etcdctl check
perf ends by deleting its 60,000 keys in one request, which every member applies on its
loop): the leader hears nothing while it applies, and neither do the followers.
SIGSTOP on all three is the same stall without the minute of load it takes to build.
"""

from __future__ import annotations

from pathlib import Path

import anyio

from kvstore.client import Client
from kvstore.local.cluster import KVCluster

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

"""A lease keepalive through a leader kill: the client lives on and the lease too.

When the member a keepalive stream goes to dies (or loses its leader, which
ends the stream too), the next renewal is written to a stream that has
already finished. That must move the keepalive to another member, not
escape as an error that ends the client's task group.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from kvstore.client import Client
from kvstore.local.cluster import KVCluster
from tests.integration.test_client_leader_kill import wait_for_leader

TTL = 3


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[KVCluster]:
    c = KVCluster(root=tmp_path / "kv3", size=3)
    c.start()
    yield c
    c.stop()


async def test_keepalive_outlives_the_leader_kill(cluster: KVCluster) -> None:
    async with Client(cluster.endpoints) as probe:
        leader = await wait_for_leader(probe, cluster.endpoints)
    # The client talks to the leader: its keepalive stream is on the member about to die.
    endpoints = cluster.endpoints[leader:] + cluster.endpoints[:leader]
    async with Client(endpoints) as client:
        lease = await client.grant(TTL)
        async with client.keepalive(lease.ID) as keepalive:
            await anyio.to_thread.run_sync(cluster.kill, leader)
            await wait_for_leader(client, [e for e in endpoints if e != cluster.endpoints[leader]])
            # Several TTLs after the election: renewals went on through the new leader.
            until = time.monotonic() + 3 * TTL
            while time.monotonic() < until:
                assert not keepalive.lost.is_set()
                await anyio.sleep(0.5)  # watching the lease over time is the test
            remaining = await client.time_to_live(lease.ID)
            assert remaining.TTL > 0
        await client.put("/after-failover", "the client still works")

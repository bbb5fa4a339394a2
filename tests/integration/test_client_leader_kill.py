"""Writes through a client that knows every member, after the member it uses is SIGKILLed.

The killed member's address stays in the client's list: the client must move
on from it as soon as connecting fails, not wait out its connect timeout, or
every leader failover costs that timeout on top of the election.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from kvstore.client import Client, EtcdError, UnavailableError
from kvstore.local.cluster import KVCluster
from kvstore.local.etcd import EtcdCluster

Cluster = KVCluster | EtcdCluster

# Far above what a failover takes, so that waiting it out is unmistakable.
CONNECT_TIMEOUT = 60.0


@pytest.fixture(params=["kvstore", "etcd"])
def cluster(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Cluster]:
    c: Cluster = (
        KVCluster(root=tmp_path / "kv3", size=3)
        if request.param == "kvstore"
        else EtcdCluster(root=tmp_path / "etcd3", size=3)
    )
    c.start()
    yield c
    c.stop()


async def wait_for_leader(client: Client, endpoints: list[str]) -> int:
    """Index in ``endpoints`` of the member that reports itself leader, once one does."""
    with anyio.fail_after(60):
        while True:
            for i, endpoint in enumerate(endpoints):
                try:
                    status = await client.status(endpoint, timeout=1)
                except EtcdError:
                    continue
                if status.leader and status.leader == status.header.member_id:
                    return i
            await anyio.sleep(0.1)  # polling the members' status


async def test_write_moves_off_the_killed_leader_without_waiting_the_connect_timeout(
    cluster: Cluster,
) -> None:
    async with Client(cluster.endpoints, default_timeout=5) as probe:
        leader = await wait_for_leader(probe, cluster.endpoints)
        # The leader first: the client's connection is to the member about to die.
        endpoints = cluster.endpoints[leader:] + cluster.endpoints[:leader]
        survivors = endpoints[1:]
        async with Client(
            endpoints, connect_timeout=CONNECT_TIMEOUT, default_timeout=2 * CONNECT_TIMEOUT
        ) as client:
            await client.put("/gap/k", "before")
            assert client.current_endpoint == endpoints[0]

            cluster.kill(leader)
            await wait_for_leader(probe, survivors)

            ambiguous = 0
            with anyio.fail_after(CONNECT_TIMEOUT / 2):
                while True:
                    try:
                        response = await client.put("/gap/k", "after")
                        break
                    except UnavailableError:
                        # A write already on the dead member's connection may have been
                        # applied, so it is not resent; the next call goes elsewhere.
                        ambiguous += 1
                        assert ambiguous < 5, "the client keeps going back to the dead member"
            assert client.current_endpoint in survivors
            assert response.header.member_id != 0
            got = await client.get("/gap/k")
            assert got.kvs[0].value == b"after"

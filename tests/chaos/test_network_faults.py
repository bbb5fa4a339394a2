"""The peer-link proxy really cuts links, on a real etcd and on our store (whose gRPC peer
transport the proxy tells apart by its user agent): a partitioned leader is replaced,
and healing brings back a single leader the old one follows."""

from __future__ import annotations

import time
from pathlib import Path

import anyio
import pytest

from chaos.cluster import ProcessClusterUnderTest
from chaos.faults import LeaderMonitor
from chaos.proxy import LinkRule, etcd_sender
from kvstore.client import Client, EtcdError


def test_sender_is_read_from_the_etcd_peer_header() -> None:
    head = (
        b"GET /raft/stream/msgapp/1 HTTP/1.1\r\nHost: x\r\nX-Server-From: 8e9e05c52164694d\r\n\r\n"
    )
    assert etcd_sender(head) == 0x8E9E05C52164694D
    assert etcd_sender(b"GET /raft/probing HTTP/1.1\r\n\r\n") is None


async def _leader(monitor: LeaderMonitor, client: Client, deadline: float) -> int:
    while time.monotonic() < deadline:
        leader = await monitor.leader(client)
        if leader is not None:
            return leader
        await anyio.sleep(0.2)
    raise AssertionError("no leader")


async def _one_leader_for_all(client: Client, endpoints: list[str], deadline: float) -> bool:
    """Wait until every member names the same leader in the same term."""
    while time.monotonic() < deadline:
        views: set[tuple[int, int]] = set()
        try:
            for endpoint in endpoints:
                st = await client.status(endpoint, timeout=2.0)
                views.add((int(st.leader), int(st.raftTerm)))
        except (EtcdError, OSError):
            views.add((0, 0))  # a member that does not answer yet
        if len(views) == 1 and next(iter(views))[0] != 0:
            return True
        await anyio.sleep(0.2)
    return False


@pytest.mark.parametrize("target", ["etcd", "kvstore"])
async def test_partitioned_leader_is_replaced_and_heals(tmp_path: Path, target: str) -> None:
    cluster = ProcessClusterUnderTest(tmp_path / "c", 3, network=True, target=target)
    net = cluster.network
    assert net is not None
    await anyio.to_thread.run_sync(cluster.start)
    try:
        monitor = LeaderMonitor(cluster)
        async with Client(cluster.endpoints, default_timeout=5.0) as client:
            old = await _leader(monitor, client, time.monotonic() + 30)
            deadline = time.monotonic() + 30
            while len(monitor.member_ids) < 3 and time.monotonic() < deadline:
                await monitor.leader(client)  # a slow member may miss one Status poll
            assert len(monitor.member_ids) == 3
            net.set_member_ids(monitor.member_ids)
            net.partition([[old], [i for i in range(3) if i != old]])
            others = [cluster.endpoints[i] for i in range(3) if i != old]
            deadline = time.monotonic() + 60
            new = old
            while new == old and time.monotonic() < deadline:
                await anyio.sleep(0.3)
                st = await client.status(others[0], timeout=2.0)
                new = monitor.member_ids.get(int(st.leader), old)
            assert new != old, "the majority side never elected a new leader"
            # The isolated old leader cannot commit: a write through it fails or times out.
            async with Client([cluster.endpoints[old]], default_timeout=2.0) as isolated:
                try:
                    await isolated.put("/net/x", "1")
                    committed = True
                except Exception:
                    committed = False
            assert not committed
            net.heal()
            await anyio.to_thread.run_sync(cluster.wait_healthy, 60.0)
            assert await _one_leader_for_all(client, cluster.endpoints, time.monotonic() + 60)
            async with Client([cluster.endpoints[old]], default_timeout=5.0) as healed:
                for _ in range(50):
                    try:
                        await healed.put("/net/y", "2")
                        break
                    except Exception:
                        await anyio.sleep(0.2)
                assert (await healed.get("/net/y")).kvs[0].value == b"2"
            # One-way and delay rules are accepted and lifted by heal().
            net.set_rule(0, 1, LinkRule(delay=0.05))
            net.set_rule(1, 2, LinkRule(loss=0.1))
            net.heal()
            assert net.rules == {}
    finally:
        await anyio.to_thread.run_sync(cluster.stop)

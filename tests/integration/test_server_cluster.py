"""Our 3-member cluster as real processes: replication, watch, leases, failover, restart."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from kvstore.client import Client, EtcdError, LeaseNotFoundError, txn
from kvstore.local.cluster import KVCluster, KVStartError
from kvstore.server.transport import SNAPSHOT_CHUNK_BYTES


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KVCluster]:
    c = KVCluster(root=Path(tmp_path_factory.mktemp("kv3")), size=3)
    c.start()
    yield c
    c.stop()


@pytest.fixture
def fresh(tmp_path: Path) -> Iterator[KVCluster]:
    """A cluster per test, for tests that kill members."""
    c = KVCluster(root=tmp_path / "kv3", size=3)
    c.start()
    yield c
    c.stop()


async def _leader_index(client: Client, c: KVCluster) -> int:
    for i, ep in enumerate(c.endpoints):
        if c.members[i].running:
            st = await client.status(ep)
            if st.leader == st.header.member_id:
                return i
    raise AssertionError("no leader found")


async def test_write_on_one_member_is_read_on_every_member(cluster: KVCluster) -> None:
    async with Client([cluster.endpoints[0]]) as c0:
        put = await c0.put("/rw/a", "1")
        assert put.header.revision > 1
        assert put.header.cluster_id and put.header.member_id and put.header.raft_term
    for ep in cluster.endpoints:
        async with Client([ep]) as c:
            got = await c.get("/rw/a")  # linearizable: ReadIndex through the leader
            assert [(kv.key, kv.value) for kv in got.kvs] == [(b"/rw/a", b"1")]
            assert got.header.revision >= put.header.revision


async def test_txn_delete_and_errors(cluster: KVCluster) -> None:
    async with Client(cluster.endpoints) as client:
        put = await client.put("/tx/a", "1")
        ok = await (
            client.txn()
            .when(txn.mod_revision("/tx/a") == put.header.revision)
            .then(txn.put("/tx/a", "2"))
            .otherwise(txn.get("/tx/a"))
            .commit()
        )
        assert ok.succeeded
        lost = await (
            client.txn()
            .when(txn.mod_revision("/tx/a") == put.header.revision)
            .then(txn.put("/tx/a", "3"))
            .otherwise(txn.get("/tx/a"))
            .commit()
        )
        assert not lost.succeeded
        assert lost.responses[0].response_range.kvs[0].value == b"2"
        # A txn without writes is served as a linearizable read: no new revision.
        ro = await client.txn().when(txn.value("/tx/a") == "2").then(txn.get("/tx/a")).commit()
        assert ro.succeeded and ro.responses[0].response_range.kvs[0].value == b"2"
        assert ro.header.revision == lost.header.revision
        deleted = await client.delete("/tx/", prefix=True)
        assert deleted.deleted == 1
        with pytest.raises(EtcdError) as err:
            await client.put("/tx/big", b"x" * (1800 * 1024))
        assert "request is too large" in str(err.value)
        with pytest.raises(EtcdError) as err:
            await client.get("/tx/a", revision=10**9)
        assert "future revision" in str(err.value)
        many = client.txn().then(*(txn.put(f"/tx/m{i}", "v") for i in range(129)))
        with pytest.raises(EtcdError) as err:
            await many.commit()
        assert "too many operations in txn request" in str(err.value)
        with pytest.raises(LeaseNotFoundError):
            await client.revoke(12345)
        with pytest.raises(LeaseNotFoundError):
            await client.put("/tx/l", "v", lease=12345)


async def test_watch_and_lease_expiry(cluster: KVCluster) -> None:
    async with Client(cluster.endpoints) as client:
        lease = await client.grant(2)
        assert lease.TTL == 2
        async with client.watch("/wl/", prefix=True) as watch:
            put = await client.put("/wl/k", "v", lease=lease.ID)
            assert await client.keepalive_once(lease.ID) == 2
            ttl = await client.time_to_live(lease.ID, keys=True)
            assert ttl.grantedTTL == 2 and list(ttl.keys) == [b"/wl/k"]
            assert lease.ID in await client.leases()
            events: list[tuple[int, bytes, int]] = []
            with anyio.fail_after(20):  # expiry: TTL + the leader's revoke through Raft
                async for batch in watch:
                    events.extend((e.type, e.kv.key, e.kv.mod_revision) for e in batch.events)
                    if len(events) >= 2:
                        break
            assert events[0] == (0, b"/wl/k", put.header.revision)
            assert events[1][:2] == (1, b"/wl/k")
        assert (await client.time_to_live(lease.ID)).TTL == -1


async def test_leader_kill_failover_catch_up_and_full_restart(fresh: KVCluster) -> None:
    acked: dict[str, int] = {}
    async with Client(fresh.endpoints, default_timeout=15) as client:
        for i in range(20):
            acked[f"/fo/{i}"] = (await client.put(f"/fo/{i}", str(i))).header.revision
        leader = await _leader_index(client, fresh)
        fresh.kill(leader)
        killed_at = time.monotonic()
        gap = None
        others = [ep for i, ep in enumerate(fresh.endpoints) if i != leader]
        async with Client(others, default_timeout=2) as writer:
            with anyio.fail_after(30):
                while True:
                    try:
                        r = await writer.put("/fo/after", "x")
                        acked["/fo/after"] = r.header.revision
                        break
                    except EtcdError:
                        continue
            gap = time.monotonic() - killed_at
        print(f"failover gap: {gap:.2f}s")
        for i in range(20, 40):
            acked[f"/fo/{i}"] = (await client.put(f"/fo/{i}", str(i))).header.revision

        # The killed member restarts and catches up: same hash at the same revision.
        fresh.restart(leader)
        await _wait_same_hash(client, fresh, max(acked.values()))

    # Every acknowledged write survives a full-cluster crash and restart.
    for i in range(3):
        fresh.kill(i)
    fresh.start()
    async with Client(fresh.endpoints, default_timeout=15) as client:
        got = await client.get("/fo/", prefix=True)
        have = {kv.key.decode(): kv.mod_revision for kv in got.kvs}
        assert have == acked


async def _wait_same_hash(client: Client, c: KVCluster, rev: int) -> None:
    with anyio.fail_after(30):
        while True:
            hashes: set[int | None] = set()
            for ep in c.endpoints:
                try:
                    hashes.add((await client.hash_kv(ep, rev, timeout=2)).hash)
                except EtcdError:
                    hashes.add(None)
            if len(hashes) == 1 and None not in hashes:
                return
            await anyio.sleep(0.2)  # polling another process's progress


async def _writes_a_member_misses(
    client: Client, c: KVCluster, puts: int, size: int
) -> tuple[int, int]:
    """Kill a follower, then put ``puts`` values of ``size`` bytes over 20 keys under
    /snap/: (the killed member, the last revision)."""
    leader = await _leader_index(client, c)
    # A follower other than the client's first endpoint: a write on the
    # connection of a member just killed is ambiguous and is not resent.
    behind = max(i for i in range(3) if i != leader)
    assert client.current_endpoint != c.endpoints[behind]
    c.kill(behind)
    rev = 0
    for i in range(puts):
        rev = (await client.put(f"/snap/{i % 20}", f"{i}:" + "x" * size)).header.revision
    return behind, rev


async def test_far_behind_member_catches_up_through_a_snapshot(tmp_path: Path) -> None:
    c = KVCluster(root=tmp_path / "snap", size=3, extra_args=["--snapshot-count=50"])
    c.start()
    try:
        async with Client(c.endpoints, default_timeout=15) as client:
            # Large values make the snapshot span several transfer chunks.
            behind, rev = await _writes_a_member_misses(client, c, 300, 20_000)
            c.restart(behind)
            await _wait_same_hash(client, c, rev)
            assert "restored snapshot" in c.members[behind].log_path.read_text()
            sent = [
                int(size)
                for m in c.members
                for size in re.findall(r"sent a (\d+)-byte snapshot", m.log_path.read_text())
            ]
            assert sent and max(sent) > 2 * SNAPSHOT_CHUNK_BYTES, sent
            # The snapshots the others took hold no copy of their backend (etcd's too):
            # the state went as a copy made for the member that needed it.
            taken = [
                f.stat().st_size
                for i in range(3)
                if i != behind
                for f in (c.members[i].data_dir / "member" / "snap").glob("*.snap")
            ]
            assert taken and max(taken) < 64 * 1024, taken
        # Restart from snapshot + WAL on every member.
        for i in range(3):
            c.kill(i)
        c.start()
        async with Client(c.endpoints, default_timeout=15) as client:
            got = await client.get("/snap/", prefix=True)
            assert got.count == 20 and got.header.revision == rev
    finally:
        c.stop()


async def test_a_member_that_crashed_before_installing_a_snapshot_restarts_from_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The snapshot from the leader is on disk (and the WAL before it released) but the
    backend is still the old one: the member restarts from the saved snapshot."""
    c = KVCluster(root=tmp_path / "snap", size=3, extra_args=["--snapshot-count=50"])
    c.start()
    try:
        async with Client(c.endpoints, default_timeout=15) as client:
            behind, rev = await _writes_a_member_misses(client, c, 200, 2000)
            monkeypatch.setenv("KVSTORE_FAILPOINTS", "raftBeforeApplySnap=panic")
            with pytest.raises(KVStartError, match="exited"):
                c.restart(behind)  # it saved the leader's snapshot, then crashed
            monkeypatch.delenv("KVSTORE_FAILPOINTS")
            c.restart(behind)
            await _wait_same_hash(client, c, rev)
            got = await client.get("/snap/", prefix=True)
            assert got.count == 20
    finally:
        c.stop()


def test_http_health_version_metrics(cluster: KVCluster) -> None:
    import json
    import urllib.request

    for m in cluster.members:
        with urllib.request.urlopen(f"{m.http_url}/health", timeout=5) as resp:
            assert json.loads(resp.read()) == {"health": "true", "reason": ""}
        with urllib.request.urlopen(f"{m.http_url}/version", timeout=5) as resp:
            assert json.loads(resp.read())["etcdserver"].startswith("3.5")
        with urllib.request.urlopen(f"{m.http_url}/metrics", timeout=5) as resp:
            text = resp.read().decode()
        for name in (
            "etcd_server_has_leader 1",
            "etcd_server_leader_changes_seen_total",
            "etcd_server_proposals_committed_total",
            "etcd_server_proposals_applied_total",
            "etcd_server_proposals_pending",
            "etcd_server_proposals_failed_total",
            "etcd_disk_wal_fsync_duration_seconds_bucket",
            "etcd_disk_backend_commit_duration_seconds_count",
            "etcd_mvcc_db_total_size_in_bytes",
        ):
            assert name in text

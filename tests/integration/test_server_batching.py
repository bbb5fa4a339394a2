"""Group commit on real processes: concurrent writes share WAL fsyncs."""

from __future__ import annotations

import re
import urllib.request
from pathlib import Path

import anyio

from kvstore.client import Client
from kvstore.local.cluster import KVCluster, KVMember

WORKERS = 64
PUTS_PER_WORKER = 10


def _fsyncs(member: KVMember) -> int:
    with urllib.request.urlopen(f"{member.http_url}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    found = re.search(r"^etcd_disk_wal_fsync_duration_seconds_count (\d+)", text, re.M)
    assert found, "fsync count missing from /metrics"
    return int(found.group(1))


async def test_concurrent_puts_share_fsyncs(tmp_path: Path) -> None:
    cluster = KVCluster(root=tmp_path / "kv3", size=3)
    cluster.start()
    try:
        async with Client(cluster.endpoints) as client:
            statuses = [await client.status(ep) for ep in cluster.endpoints]
        leader = next(i for i, st in enumerate(statuses) if st.leader == st.header.member_id)
        member = cluster.members[leader]
        async with Client([cluster.endpoints[leader]], default_timeout=30) as client:
            await client.put("/batch/warm", "x")
            before = await anyio.to_thread.run_sync(_fsyncs, member)

            async def worker(w: int) -> None:
                for i in range(PUTS_PER_WORKER):
                    await client.put(f"/batch/{w}/{i}", "v" * 64)

            async with anyio.create_task_group() as tg:
                for w in range(WORKERS):
                    tg.start_soon(worker, w)
            after = await anyio.to_thread.run_sync(_fsyncs, member)
            got = await client.get("/batch/", prefix=True, count_only=True)
        puts = WORKERS * PUTS_PER_WORKER
        assert got.count == puts + 1
        # Group commit: writes that arrive while a batch is being made durable and
        # replicated go into the next one, so 64 writers in flight share fsyncs.
        assert after - before <= puts // 2, (after - before, puts)
    finally:
        cluster.stop()

"""A snapshot deletes the WAL segments it covers, in a worker thread, not on the loop."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

from kvstore._pb.etcdserverpb import rpc_pb2
from kvstore.raft.types import Role
from kvstore.server.bootstrap import bootstrap
from kvstore.server.node import Node
from kvstore.storage.wal import WAL
from tests.integration.inprocess import single_member_config

SEGMENT_BYTES = 1024 * 1024
VALUE = b"v" * (64 * 1024)


async def test_segments_a_snapshot_covers_are_deleted_beside_the_loop(tmp_path: Path) -> None:
    cfg = single_member_config(
        tmp_path,
        heartbeat_ms=20,
        election_ms=200,
        snapshot_count=20,
        wal_segment_bytes=SEGMENT_BYTES,
    )
    node = Node(cfg, bootstrap(cfg), lambda msgs: None)
    released_in: list[int] = []
    release_to = node.wal.release_to

    def recorded_release(index: int) -> int:
        released_in.append(threading.get_ident())
        return release_to(index)

    node.wal.release_to = recorded_release  # type: ignore[method-assign]
    wal_dir = Path(cfg.data_dir) / "member" / "wal"
    tasks = [asyncio.create_task(node.run()), asyncio.create_task(node.run_ticker())]
    try:
        async with asyncio.timeout(60):
            while node.role != Role.LEADER:
                await node.leader_changed.wait()
            # 101 writes of 64 KiB: several segments, several snapshots.
            for i in range(100):
                await node.propose(rpc_pb2.PutRequest(key=b"k%03d" % i, value=VALUE))
            await node.snapshotter.wait_idle()  # the last snapshot's file is written
            # One more entry: a Ready after it, which records it and starts its release.
            await node.propose(rpc_pb2.PutRequest(key=b"k100", value=VALUE))
            await node.snapshotter.wait_idle()
    finally:
        node.stop()
        await asyncio.gather(*tasks, return_exceptions=True)
    assert released_in and threading.get_ident() not in released_in
    segments = sorted(wal_dir.glob("*.wal"))
    assert len(segments) <= 3, [s.name for s in segments]  # ~6 MiB written, 1 MiB each
    # What is left still opens, and the member restarts with every write.
    restarted = Node(cfg, bootstrap(cfg), lambda msgs: None)
    run = asyncio.create_task(restarted.run())
    try:
        found = restarted.store.range(
            rpc_pb2.RangeRequest(key=b"k", range_end=b"l", count_only=True)
        )
        assert found.count == 101
    finally:
        restarted.stop()
        await run
    assert WAL.exists(wal_dir)

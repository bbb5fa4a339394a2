"""After the WAL's fsync fails, a member makes nothing more durable, and a restart
recovers every write acknowledged before the failure from the WAL."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from kvstore._pb.etcdserverpb import rpc_pb2
from kvstore.failpoints import FailpointError
from kvstore.raft.types import Role
from kvstore.server.bootstrap import bootstrap
from kvstore.server.node import Node
from kvstore.storage import wal as wal_module
from kvstore.storage.errors import StorageError
from tests.integration.inprocess import single_member_config


async def _leading(node: Node) -> list[asyncio.Task[None]]:
    tasks = [asyncio.create_task(node.run()), asyncio.create_task(node.run_ticker())]
    async with asyncio.timeout(30):
        while node.role != Role.LEADER:
            await node.leader_changed.wait()
    return tasks


async def test_a_failed_wal_fsync_commits_no_more_of_the_backend(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Applied writes stay in the backend's open batch until the member stops.
    cfg = single_member_config(
        tmp_path, heartbeat_ms=20, election_ms=200, backend_batch_interval=3600.0
    )
    node = Node(cfg, bootstrap(cfg), lambda msgs: None)
    run, ticker = await _leading(node)
    await node.propose(rpc_pb2.PutRequest(key=b"acknowledged", value=b"1"))

    commits_after_failure: list[int] = []
    commit = node.store.commit

    def counted_commit() -> None:
        commits_after_failure.append(node.applied_index)
        commit()

    def failing_fsync(name: str) -> bool:
        if name == "walFsync":  # the disk fails the WAL's fdatasync from now on
            raise FailpointError(name)
        return False

    node.store.commit = counted_commit  # type: ignore[method-assign]
    with monkeypatch.context() as patch:
        patch.setattr(wal_module, "failpoint", failing_fsync)
        with pytest.raises(Exception):  # noqa: B017 (the member stops: any error will do)
            await node.propose(rpc_pb2.PutRequest(key=b"never", value=b"2"))
        with pytest.raises(StorageError, match="fdatasync of the WAL"):
            await run
    ticker.cancel()
    assert commits_after_failure == [], "the backend was committed after the WAL failed"

    # The restarted member replays the WAL: the acknowledged write is there.
    restarted = Node(cfg, bootstrap(cfg), lambda msgs: None)
    run, ticker = await _leading(restarted)
    try:
        found = restarted.store.range(rpc_pb2.RangeRequest(key=b"acknowledged"))
        assert [kv.value for kv in found.kvs] == [b"1"]
    finally:
        restarted.stop()
        await run
        ticker.cancel()

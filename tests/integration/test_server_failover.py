"""Failover details on our cluster: watches across a leader kill, leases whose leader died."""

from __future__ import annotations

import time
from pathlib import Path

import anyio

from kvstore.client import Client, EtcdError
from kvstore.local.cluster import KVCluster


async def test_watch_and_lease_survive_leader_kill(tmp_path: Path) -> None:
    c = KVCluster(root=tmp_path / "kv3", size=3)
    c.start()
    try:
        async with Client(c.endpoints, default_timeout=15) as client:
            leader = -1
            for i, ep in enumerate(c.endpoints):
                st = await client.status(ep)
                if st.leader == st.header.member_id:
                    leader = i
            others = [ep for i, ep in enumerate(c.endpoints) if i != leader]
            # Watch through a follower so the stream is not cut by the kill itself.
            async with Client(others, default_timeout=15) as watcher:
                lease = await client.grant(3)
                await client.put("/lw/leased", "x", lease=lease.ID)
                async with watcher.watch("/lw/", prefix=True) as watch:
                    written = [
                        (await client.put(f"/lw/{i}", str(i))).header.revision for i in range(5)
                    ]
                    c.kill(leader)
                    killed = time.monotonic()
                    async with Client(others, default_timeout=2) as writer:
                        with anyio.fail_after(30):
                            for i in range(5, 10):
                                while True:
                                    try:
                                        r = await writer.put(f"/lw/{i}", str(i))
                                        break
                                    except EtcdError:
                                        continue
                                written.append(r.header.revision)
                    puts: list[int] = []
                    deleted_at = None
                    with anyio.fail_after(30):
                        async for batch in watch:
                            for e in batch.events:
                                if e.type == 0:
                                    puts.append(e.kv.mod_revision)
                                elif e.kv.key == b"/lw/leased":
                                    deleted_at = time.monotonic()
                            if set(written) <= set(puts) and deleted_at is not None:
                                break
                    # Every acknowledged put, exactly once and in order, across the
                    # failover (a put that failed with "unavailable" may have committed
                    # too, so the watch can see more revisions than were acknowledged).
                    assert puts == sorted(set(puts))
                    assert set(written) <= set(puts)
                    # The lease expired although the leader that granted it died: the new
                    # leader extends leases by an election timeout, so about TTL + 1 s.
                    assert deleted_at is not None and deleted_at - killed < 3 + 1 + 5
    finally:
        c.stop()


async def test_require_leader_watch_ends_when_the_member_loses_its_leader(tmp_path: Path) -> None:
    import grpc

    from kvstore._pb.etcdserverpb import rpc_pb2, rpc_pb2_grpc

    c = KVCluster(root=tmp_path / "kv3", size=3)
    c.start()
    try:
        async with grpc.aio.insecure_channel(c.endpoints[0]) as channel:
            stub = rpc_pb2_grpc.WatchStub(channel)  # type: ignore[no-untyped-call]
            create = rpc_pb2.WatchRequest(create_request=rpc_pb2.WatchCreateRequest(key=b"/hl"))
            call = stub.Watch(iter([create]), metadata=(("hasleader", "true"),))
            first = await call.read()
            assert first.created
            c.pause(1)
            c.pause(2)
            try:
                with anyio.fail_after(20):
                    while True:
                        resp = await call.read()
                        if resp is grpc.aio.EOF:
                            break
            except grpc.aio.AioRpcError as exc:
                assert exc.code() == grpc.StatusCode.UNAVAILABLE
                assert exc.details() == "etcdserver: no leader"
            else:
                raise AssertionError("stream ended without the no-leader status")
            finally:
                c.resume(1)
                c.resume(2)
    finally:
        c.stop()

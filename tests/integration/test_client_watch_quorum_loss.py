"""A client's watches outlive a store that loses its quorum for a while."""

from __future__ import annotations

from pathlib import Path

import anyio

from kvstore.client import Client, EtcdError
from kvstore.local.cluster import KVCluster

QUORUM_LOST_FOR = 5.0  # seconds: the fault's duration, long enough for many reconnects


async def test_watches_resume_after_the_quorum_comes_back(tmp_path: Path) -> None:
    cluster = KVCluster(root=tmp_path / "kv3", size=3)
    cluster.start()
    try:
        async with Client(cluster.endpoints, default_timeout=15) as client:
            # Several watches on one stream: while there is no leader the member left ends
            # each new stream at once, often before the client has sent every create.
            seen: dict[str, list[bytes]] = {f"/quorum/{i}": [] for i in range(4)}
            changed = anyio.Event()

            async def follow(key: str) -> None:
                nonlocal changed
                async with client.watch(key) as watch:
                    async for batch in watch:
                        seen[key].extend(event.kv.value for event in batch.events)
                        changed.set()
                        changed = anyio.Event()

            async def put_everywhere(value: str) -> None:
                with anyio.fail_after(60):
                    for key in seen:
                        while True:
                            try:
                                await client.put(key, value)
                                break
                            except EtcdError:
                                continue  # an election right after the restart; put again

            async def wait_all_see(value: bytes) -> None:
                with anyio.fail_after(60):
                    while not all(value in values for values in seen.values()):
                        await changed.wait()

            async with anyio.create_task_group() as tasks:
                for key in seen:
                    tasks.start_soon(follow, key)
                await put_everywhere("before")
                await wait_all_see(b"before")

                cluster.kill(0)
                cluster.kill(1)
                with anyio.fail_after(30):
                    while True:
                        try:
                            status = await client.status(cluster.endpoints[2], timeout=1)
                        except EtcdError:
                            status = None
                        if status is not None and status.leader == 0:
                            break
                        await anyio.sleep(0.1)  # polling the member left for its leader
                await anyio.sleep(QUORUM_LOST_FOR)

                cluster.spawn(0)
                cluster.spawn(1)
                await anyio.to_thread.run_sync(cluster.wait_healthy)
                await put_everywhere("after")
                await wait_all_see(b"after")
                tasks.cancel_scope.cancel()
    finally:
        cluster.stop()

"""etcd's corruption checks on our cluster: a value flipped in one member's backend.

With ``--experimental-initial-corrupt-check`` that member refuses to start;
without it, the leader's periodic check (``--experimental-corrupt-check-time``)
raises a CORRUPT alarm through Raft and writes are refused, as etcd does.
Auth is enabled: members ask each other over the peer transport, so the
checks need no user (a client's HashKV is root's).
"""

from __future__ import annotations

import time
from pathlib import Path

import anyio
import lmdb
import pytest

from kvstore._pb.mvccpb import kv_pb2
from kvstore.client import Client
from kvstore.client.errors import EtcdError
from kvstore.local.cluster import KVCluster
from kvstore.rpctypes import ERR_CORRUPT


def flip_value(data_dir: Path, key: bytes) -> None:
    """Change the stored value of ``key``'s latest revision (the member must be stopped)."""
    env = lmdb.open(str(data_dir / "member" / "db"), max_dbs=8)
    try:
        key_db = env.open_db(b"key")
        with env.begin(write=True) as txn:
            latest = None
            for k, v in txn.cursor(db=key_db):
                kv = kv_pb2.KeyValue.FromString(v)
                if kv.key == key and len(k) == 17:
                    latest = (k, kv)
            assert latest is not None, key
            latest[1].value = b"flipped"
            txn.put(latest[0], latest[1].SerializeToString(), db=key_db)
    finally:
        env.close()


async def same_hash_everywhere(client: Client, endpoints: list[str], rev: int) -> None:
    with anyio.fail_after(60):
        while True:
            hashes: set[int | None] = set()
            for ep in endpoints:
                try:
                    hashes.add((await client.hash_kv(ep, rev, timeout=5)).hash)
                except EtcdError:
                    hashes.add(None)
            if len(hashes) == 1 and None not in hashes:
                return
            await anyio.sleep(0.2)  # polling other processes' progress


def wait_exit(cluster: KVCluster, index: int, timeout: float) -> int:
    process = cluster.members[index].process
    assert process is not None
    return process.wait(timeout=timeout)


ROOT = ("root", "rootpw")


def etcdctl_alarms(cluster: KVCluster) -> str:
    user = "--user=" + ":".join(ROOT)
    proc = cluster.etcdctl(user, "alarm", "list", endpoints=cluster.endpoints[:2])
    return proc.stdout if proc.returncode == 0 else ""


async def test_a_flipped_value_is_caught(tmp_path: Path) -> None:
    c = KVCluster(root=tmp_path / "c", size=3, extra_args=["--experimental-corrupt-check-time=1s"])
    c.start()
    try:
        async with Client(c.endpoints, default_timeout=15) as admin:
            await admin.user_add(*ROOT)
            await admin.user_grant_role("root", "root")
            await admin.auth_enable()
        user, password = ROOT
        async with Client(c.endpoints, default_timeout=15, user=user, password=password) as client:
            for i in range(20):
                last = await client.put(f"/c/{i:02d}", f"value-{i}")
            await same_hash_everywhere(client, c.endpoints, last.header.revision)
            assert "CORRUPT" not in etcdctl_alarms(c)  # the check runs and finds nothing

            victim = c.members[2]
            assert victim.process is not None
            victim.process.terminate()
            assert victim.process.wait(timeout=30) == 0
            flip_value(victim.data_dir, b"/c/03")

            c.extra_args.append("--experimental-initial-corrupt-check")
            c.spawn(2)
            assert wait_exit(c, 2, timeout=60) == 1
            assert "found data inconsistency with peers" in victim.log_path.read_text()
            c.extra_args.remove("--experimental-initial-corrupt-check")

            # Without the initial check it starts, and the leader's check finds it. Not
            # restart(): that waits for /health, which the CORRUPT alarm may turn false first.
            c.spawn(2)
            deadline = time.monotonic() + 60
            while "alarm:CORRUPT" not in etcdctl_alarms(c):
                assert time.monotonic() < deadline, "no CORRUPT alarm"
                await anyio.sleep(0.5)  # the check runs every second
            with pytest.raises(EtcdError, match=ERR_CORRUPT):
                await client.put("/c/after", "refused")
            got = await client.get("/c/00")  # reads go on, as in etcd
            assert got.kvs[0].value == b"value-0"
    finally:
        c.stop()

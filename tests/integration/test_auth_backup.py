"""Backups carry access control both ways, in etcd's auth, authUsers and authRoles buckets.

A backup of our auth-enabled store restores into a real etcd that then refuses
and allows exactly as before; a real etcd's auth-enabled backup restores into
our store the same way. Taking a backup is root's, as with etcd.
"""

from __future__ import annotations

import sys
from pathlib import Path

import anyio
import pytest

from kvstore.client import AuthFailedError, Client, PermissionDeniedError, UserEmptyError
from kvstore.local.binaries import etcd_bin_dir
from kvstore.local.cluster import KVCluster
from kvstore.local.etcd import EtcdCluster, run_etcdctl
from tests.integration.test_auth import setup_users

Server = KVCluster | EtcdCluster


async def check_access(server: Server) -> None:
    """The rules setup_users made, as seen through ``server``."""
    endpoints = server.endpoints
    async with Client(endpoints, user="alice", password="alicepw", default_timeout=15) as alice:
        assert (await alice.get("/shared")).kvs[0].value == b"hello"
        assert (await alice.get("/app/kept")).kvs[0].value == b"1"
        await alice.put("/app/new", "2")
        with pytest.raises(PermissionDeniedError):
            await alice.put("/shared", "mine")
    async with Client(endpoints, default_timeout=15) as anonymous:
        with pytest.raises(UserEmptyError):
            await anonymous.get("/shared")
    with pytest.raises(AuthFailedError):
        async with Client(endpoints, user="alice", password="wrong"):
            pass
    async with Client(endpoints, user="root", password="rootpw", default_timeout=15) as root:
        status = await root.auth_status()
        assert status.enabled
        assert sorted((await root.user_get("alice")).roles) == ["app"]


async def take_backup(server: Server, path: Path) -> None:
    async with Client(server.endpoints, user="alice", password="alicepw") as alice:
        await alice.put("/app/kept", "1")
    denied = run_etcdctl(
        server.endpoints[:1], "--user", "alice:alicepw", "snapshot", "save", str(path)
    )
    assert denied.returncode != 0 and "permission denied" in denied.stderr
    saved = run_etcdctl(
        server.endpoints[:1], "--user", "root:rootpw", "snapshot", "save", str(path)
    )
    assert saved.returncode == 0, saved.stderr


async def test_our_backup_with_auth_restores_into_etcd(tmp_path: Path) -> None:
    ours = KVCluster(root=tmp_path / "ours", size=1)
    ours.start()
    try:
        await setup_users(ours.endpoints)
        backup = tmp_path / "ours.db"
        await take_backup(ours, backup)
    finally:
        ours.stop()
    etcd = EtcdCluster(root=tmp_path / "etcd", size=1)
    member = etcd.members[0]
    restored = await anyio.run_process(
        [
            str(etcd_bin_dir() / "etcdutl"),
            "snapshot",
            "restore",
            str(backup),
            f"--name={member.name}",
            f"--data-dir={member.data_dir}",
            f"--initial-cluster={member.name}={member.peer_url}",
            f"--initial-advertise-peer-urls={member.peer_url}",
            f"--initial-cluster-token={etcd.token}",
        ],
        check=False,
    )
    assert restored.returncode == 0, restored.stderr.decode()
    etcd.start()
    try:
        await check_access(etcd)
    finally:
        etcd.stop()


async def test_etcd_backup_with_auth_restores_into_ours(tmp_path: Path) -> None:
    etcd = EtcdCluster(root=tmp_path / "etcd", size=1)
    etcd.start()
    try:
        await setup_users(etcd.endpoints)
        backup = tmp_path / "etcd.db"
        await take_backup(etcd, backup)
    finally:
        etcd.stop()
    ours = KVCluster(root=tmp_path / "ours", size=1)
    member = ours.members[0]
    restored = await anyio.run_process(
        [
            sys.executable,
            "-m",
            "kvstore.cli.main",
            "snapshot",
            "restore",
            str(backup),
            "--name",
            member.name,
            "--data-dir",
            str(member.data_dir),
        ],
        check=False,
    )
    assert restored.returncode == 0, restored.stderr.decode()
    ours.start()
    try:
        await check_access(ours)
    finally:
        ours.stop()

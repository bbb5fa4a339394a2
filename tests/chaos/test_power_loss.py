"""Power loss and failpoint crashes against our store, through the chaos harness.

The power-loss disks must be able to catch a planted durability bug: with the
WAL's fdatasync skipped (the ``walFsync=skip`` failpoint, a test-only mutant),
cutting the power of every member loses acknowledged writes, and the
durability checker says so; the same round on the real code loses nothing.
Both run with the backend batch held open for longer than the campaign, so every
write acknowledged before the cut is in the WAL alone (with etcd's short batch
interval a cut that follows the last commit by less than the interval would lose
nothing even from the mutant, and the test would depend on that timing).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from chaos.campaign import CampaignConfig, CampaignResult
from chaos.disk import PowerLossDisk, fuse_available
from chaos.faults import schedule
from chaos.history import OK
from chaos.runner import run_campaign
from kvstore.client import Client
from kvstore.failpoints import ENV
from kvstore.local.cluster import KVCluster

pytestmark = pytest.mark.skipif(fuse_available() is not None, reason=str(fuse_available()))


BACKEND_BATCH_HELD_OPEN = "1h"


def _seed_cutting_every_member() -> int:
    """A seed whose first round cuts the power of every member (schedules are pure)."""
    for seed in range(1000):
        spec = schedule(seed, 1, power=True, only=("power_loss",))[0]
        if spec.target == "all":
            return seed
    raise AssertionError("no seed cuts every member")


async def _whole_cluster_power_cut(tmp_path: Path, member_env: dict[str, str]) -> CampaignResult:
    config = CampaignConfig(
        seed=_seed_cutting_every_member(),
        rounds=1,
        members=3,
        round_seconds=2.0,
        out_dir=tmp_path,
        target="kvstore",
        strict_leases=True,
        power=True,
        membership=False,
        fault_kinds=("power_loss",),
        member_env=member_env,
        member_flags=(f"--backend-batch-interval={BACKEND_BATCH_HELD_OPEN}",),
        lockers=0,
        lease_workers=1,
    )
    return await run_campaign(config)


async def test_skipped_wal_fsync_loses_acknowledged_writes_on_power_loss(tmp_path: Path) -> None:
    mutant = await _whole_cluster_power_cut(tmp_path / "mutant", {ENV: "walFsync=skip"})
    # Acknowledged writes gone from the committed history, or gone from some members
    # only (their HashKV or the final reads disagree): the durability checker's findings.
    assert mutant.violations.get("durability"), mutant.summary()
    assert mutant.faults[0].kind == "power_loss" and len(mutant.faults[0].members) == 3

    real = await _whole_cluster_power_cut(tmp_path / "real", {})
    assert real.ok, real.summary()
    assert real.faults[0].kind == "power_loss" and len(real.faults[0].members) == 3
    assert real.counts["put"].get(OK, 0) > 0, real.summary()


async def test_short_campaign_with_power_loss_disk_faults_and_failpoints(tmp_path: Path) -> None:
    config = CampaignConfig(
        seed=5,
        rounds=8,
        members=3,
        round_seconds=1.0,
        out_dir=tmp_path,
        target="kvstore",
        strict_leases=True,
        power=True,
        failpoints=True,
        membership=False,
        fault_kinds=("power_loss", "failpoint", "disk_full", "slow_disk", "kill"),
    )
    result = await run_campaign(config)
    assert result.ok, result.summary()
    kinds = {f.kind for f in result.faults}
    assert {"power_loss", "failpoint"} <= kinds, result.summary()
    assert any(f.note.startswith("crashed at") for f in result.faults), result.summary()
    assert result.counts["put"].get(OK, 0) > 0, result.summary()
    assert (tmp_path / "report.html").exists()


async def test_a_fresh_member_keeps_its_data_through_an_early_power_cut(tmp_path: Path) -> None:
    """No grace period: a cut right after start keeps the member's directories and data.

    (etcd 3.5 loses its whole member directory here: it never syncs the data
    directory after creating it; see chaos/README.md.)
    """
    cluster = KVCluster(root=tmp_path, size=1)
    member = cluster.members[0]
    disk = PowerLossDisk(member.data_dir)
    disk.mount()
    try:
        cluster.start()
        async with Client(cluster.endpoints, default_timeout=10) as client:
            await client.put("early", "kept")
        assert disk.stats()["pending_ops"] == 0
        cluster.kill(0)
        disk.cut_power()
        disk.mount()
        cluster.spawn(0)
        cluster.wait_healthy(timeout=60)
        async with Client(cluster.endpoints, default_timeout=10) as client:
            resp = await client.get("early")
        assert [kv.value for kv in resp.kvs] == [b"kept"]
    finally:
        cluster.stop()
        disk.unmount()

"""The short chaos campaign against our own 3-member store: zero violations expected.

Process faults (kill, pause, restart, leader transfer), network faults on the peer
links (partition, one-way drop, delay, loss) through the fault proxy, and membership
changes (a member replaced, a learner added, promoted, another member removed); lock contenders
use the election package; lease reads are judged strictly.
"""

from __future__ import annotations

from pathlib import Path

from chaos.campaign import CampaignConfig
from chaos.history import OK
from chaos.runner import run_campaign
from tests.chaos.expectations import assert_members_replaced


async def test_short_campaign_against_our_store(tmp_path: Path) -> None:
    config = CampaignConfig(
        seed=7,
        rounds=20,
        members=3,
        round_seconds=1.0,
        out_dir=tmp_path,
        target="kvstore",
        strict_leases=True,
        network=True,
    )
    result = await run_campaign(config)
    assert result.ok, result.summary()
    assert len(result.faults) == config.rounds
    assert result.counts["put"].get(OK, 0) > 0, result.summary()
    assert result.counts["cas"].get(OK, 0) > 0, result.summary()
    assert result.stats["lock_acquisitions"] > 0, result.summary()
    assert result.stats["guarded_writes"] > 0, result.summary()
    assert_members_replaced(result)

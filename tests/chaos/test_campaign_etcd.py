"""Chaos campaigns against a real 3-member etcd: zero violations expected.

The short campaign (process, network and membership faults) runs in the default suite;
longer ones are marked slow.
The same run is also used to show that the checkers would notice a broken
history of each kind (a corrupted copy of the real history).
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import pytest

from chaos import linearizability
from chaos.campaign import CampaignConfig, CampaignResult
from chaos.checkers import Batch, check_reference, check_watch
from chaos.history import OK, Op
from chaos.runner import run_campaign
from tests.chaos.expectations import assert_members_replaced


def _assert_clean(result: CampaignResult) -> None:
    assert result.ok, result.summary()
    assert len(result.faults) == result.config.rounds
    assert result.counts["put"].get(OK, 0) > 0, result.summary()
    assert result.counts["get"].get(OK, 0) > 0, result.summary()


async def test_short_campaign_has_no_violations(tmp_path: Path) -> None:
    config = CampaignConfig(
        seed=35, rounds=12, members=3, round_seconds=1.0, out_dir=tmp_path, network=True
    )
    result = await run_campaign(config)
    _assert_clean(result)
    assert_members_replaced(result)
    assert (tmp_path / "summary.txt").exists()
    assert (tmp_path / "timeline.png").read_bytes().startswith(b"\x89PNG")

    # The checkers are not vacuous on this real history: corrupt it and they object.
    ops = [dataclasses.replace(op) for op in result.ops]
    stale = _make_stale_read(ops)
    if stale:
        assert not linearizability.check(ops).ok
    acked = [op for op in result.ops if op.kind == "put" and op.status == OK]
    assert acked
    victim = acked[len(acked) // 2]
    lost = [e for e in result.reference if (e.revision, e.key) != (victim.revision, victim.key)]
    assert check_reference(lost, result.ops)
    watcher = next(w for w in result.watchers if len(w.events) > 10)
    gap = copy.deepcopy(watcher)
    first = next(i for i, b in enumerate(gap.batches) if b.events)
    gap.batches[first] = Batch(gap.batches[first].received, gap.batches[first].revision, [])
    assert check_watch(gap, result.reference)


def _make_stale_read(ops: list[Op]) -> bool:
    """Turn a read into a stale one: make it return a value overwritten before it began."""
    puts = sorted(
        (op for op in ops if op.kind == "put" and op.status == OK), key=lambda o: o.invoke
    )
    for p1 in puts:
        p2 = next((p for p in puts if p.key == p1.key and p.invoke > p1.return_time), None)
        if p2 is None:
            continue
        read = next(
            (
                op
                for op in ops
                if op.kind == "get"
                and op.status == OK
                and op.key == p1.key
                and op.invoke > p2.return_time
            ),
            None,
        )
        if read is not None:
            read.output = p1.value
            return True
    return False


@pytest.mark.slow
async def test_long_campaign_three_members(tmp_path: Path) -> None:
    config = CampaignConfig(
        seed=23, rounds=60, members=3, round_seconds=1.5, out_dir=tmp_path, network=True
    )
    _assert_clean(await run_campaign(config))


@pytest.mark.slow
async def test_campaign_five_members(tmp_path: Path) -> None:
    config = CampaignConfig(
        seed=5, rounds=30, members=5, round_seconds=1.5, out_dir=tmp_path, network=True
    )
    _assert_clean(await run_campaign(config))

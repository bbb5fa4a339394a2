"""Fault schedules are replayable from their seed; the timeline writes a valid PNG."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

from chaos.campaign import CampaignConfig, CampaignResult
from chaos.faults import (
    FAULT_KINDS,
    MEMBERSHIP_FAULT_KINDS,
    NETWORK_FAULT_KINDS,
    schedule,
)
from chaos.history import History
from chaos.timeline import render_timeline


def test_schedule_is_a_function_of_the_seed() -> None:
    assert schedule(42, 50) == schedule(42, 50)
    assert schedule(42, 50) != schedule(43, 50)
    kinds = {spec.kind for spec in schedule(1, 300)}
    assert kinds == set(FAULT_KINDS)
    assert all(s.target == "majority" for s in schedule(1, 300) if s.kind == "kill_majority")
    with_net = {spec.kind for spec in schedule(1, 300, network=True)}
    assert with_net == set(FAULT_KINDS) | set(NETWORK_FAULT_KINDS)


def test_membership_changes_join_the_schedule_replayably() -> None:
    full = schedule(5, 300, network=True, membership=True)
    assert full == schedule(5, 300, network=True, membership=True)
    assert full != schedule(6, 300, network=True, membership=True)
    kinds = {spec.kind for spec in full}
    assert kinds == set(FAULT_KINDS) | set(NETWORK_FAULT_KINDS) | set(MEMBERSHIP_FAULT_KINDS)
    assert {s.target for s in full if s.kind in MEMBERSHIP_FAULT_KINDS} == {"leader", "follower"}
    without = {spec.kind for spec in schedule(5, 300, network=True)}
    assert not without & set(MEMBERSHIP_FAULT_KINDS)


def test_history_roundtrip(tmp_path: Path) -> None:
    h = History()
    op = h.invoke("p", "put", "k", value="v")
    h.complete(op, "ok", None, 5)
    h.dump(tmp_path / "h.jsonl")
    assert History.load(tmp_path / "h.jsonl") == h.ops
    assert History.counts(h.ops) == {"put": {"ok": 1}}


def test_timeline_png_is_valid(tmp_path: Path) -> None:
    result = CampaignResult(CampaignConfig(members=3), started=0.0, duration=12.0)
    path = tmp_path / "t.png"
    render_timeline(result, path, width=300)
    data = path.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    length = struct.unpack(">I", data[8:12])[0]
    width, height = struct.unpack(">II", data[16:24])
    assert (length, width) == (13, 300)
    idat_len = struct.unpack(">I", data[33:37])[0]
    raw = zlib.decompress(data[41 : 41 + idat_len])
    assert len(raw) == height * (1 + 3 * width)

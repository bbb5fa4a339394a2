"""``kvstore bench``'s report: a column per target, medians, and the ratios that mean something."""

from __future__ import annotations

import pytest

from kvstore.cli import bench
from kvstore.cli.bench import Sample, ratio_pairs, report


def _put(rate: float, leader_us: float) -> Sample:
    return Sample(rate, 1.0, 2.0, {"leader": leader_us})


def test_ratio_pairs_compare_ours_with_etcd_and_auth_with_none() -> None:
    assert ratio_pairs(("kvstore", "kvstore+auth", "etcd", "etcd+auth")) == [
        ("kvstore", "etcd"),
        ("kvstore+auth", "etcd+auth"),
        ("kvstore+auth", "kvstore"),
        ("etcd+auth", "etcd"),
    ]
    assert ratio_pairs(("kvstore+auth", "etcd")) == []


def test_report_has_every_target_and_the_auth_ratios() -> None:
    results = {
        "kvstore": {"put@1": [_put(400, 100), _put(500, 300), _put(600, 200)]},
        "kvstore+auth": {"put@1": [_put(300, 250), _put(200, 300), _put(100, 400)]},
        "etcd": {"put@1": [_put(800, 50)]},
    }
    rows = {(r["workload"], r["metric"]): r for r in report(results)}
    rate = rows[("put@1", "req/s")]
    assert (rate["kvstore"], rate["kvstore+auth"], rate["etcd"]) == (500, 200, 800)
    assert rate["kvstore+auth/kvstore"] == pytest.approx(0.4)
    assert rate["kvstore/etcd"] == pytest.approx(0.625)
    cpu = rows[("put@1", "leader cpu us/req")]
    assert cpu["kvstore+auth/kvstore"] == pytest.approx(1.5)
    assert ("put@1", "follower cpu us/req") not in rows  # no target has the figure
    assert "etcd+auth/etcd" not in cpu  # not a target here


def test_unknown_or_repeated_targets_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    for targets in ("kvstore,etcd+tls", "kvstore,kvstore", ""):
        with pytest.raises(SystemExit) as exit_:
            bench.main(["--targets", targets, "--workloads", ""])
        assert exit_.value.code == 2
        assert "--targets" in capsys.readouterr().err

"""Object helpers (quantities, selectors, requests), the controller-manager's flags."""

from __future__ import annotations

import argparse

import pytest

from controllers.controller_manager import enabled_controllers
from controllers.objects import (
    Obj,
    SelectorError,
    label_selector_matches,
    memory_bytes,
    milli_cpu,
    selector_matches,
)
from controllers.scheduling import pod_requests
from kvstore.durations import parse_duration
from tests.unit.scheduling_objects import decide, node, pod


def test_quantities_and_durations() -> None:
    assert milli_cpu("500m") == 500
    assert milli_cpu("2") == 2000
    assert milli_cpu("1.5") == 1500
    assert memory_bytes("128Mi") == 128 * 2**20
    assert memory_bytes("1G") == 10**9
    assert memory_bytes("1024") == 1024
    assert milli_cpu("0.1") == 100  # exact decimals: no float rounding up to 101
    assert memory_bytes("1.5") == 2  # rounded up, as Quantity.Value()
    assert memory_bytes("1e3") == 1000
    assert milli_cpu("100u") == 1
    assert parse_duration("40s") == 40
    assert parse_duration("5m") == 300
    assert parse_duration("1.5s") == 1.5
    assert parse_duration("1m30s") == 90
    assert parse_duration("250ms") == 0.25
    assert parse_duration("0") == 0
    for bad in ("", "5", "s", "5x", "1.2.3s"):
        with pytest.raises(ValueError):
            parse_duration(bad)
    with pytest.raises(ValueError):
        milli_cpu("lots")


def test_selectors() -> None:
    assert selector_matches({"matchLabels": {"app": "web"}}, {"app": "web", "x": "y"})
    assert not selector_matches({"matchLabels": {"app": "web"}}, {"app": "db"})
    assert not selector_matches({}, {"app": "web"})  # empty selects nothing
    expression = {"matchExpressions": [{"key": "tier", "operator": "In", "values": ["a", "b"]}]}
    assert selector_matches(expression, {"tier": "b"})
    assert not selector_matches(expression, {"tier": "c"})
    # A pod affinity term's selector: missing selects nothing, empty selects everything.
    assert not label_selector_matches(None, {"app": "web"})
    assert label_selector_matches({}, {"app": "web"})
    with pytest.raises(SelectorError):
        label_selector_matches({"matchExpressions": [{"key": "a", "operator": "Gt"}]}, {})
    with pytest.raises(SelectorError):
        label_selector_matches({"matchExpressions": [{"key": "a", "operator": "In"}]}, {})


def test_controllers_flag() -> None:
    assert enabled_controllers("*") == [
        "nodelifecycle",
        "taint-eviction-controller",
        "replicaset",
        "deployment",
    ]
    assert enabled_controllers("*,-replicaset") == [
        "nodelifecycle",
        "taint-eviction-controller",
        "deployment",
    ]
    assert enabled_controllers("replicaset") == ["replicaset"]
    with pytest.raises(argparse.ArgumentTypeError):
        enabled_controllers("garbagecollector")


def test_requests_sum_containers_and_non_zero_defaults() -> None:
    p = pod("p", "250m", "1Gi")
    assert pod_requests(p) == {"cpu": 250, "memory": 2**30}
    empty = pod("e")
    assert pod_requests(empty) == {}
    assert pod_requests(empty, non_zero=True) == {"cpu": 100, "memory": 200 * 2**20}
    sidecar = {
        **pod("s"),
        "spec": {
            "initContainers": [
                {
                    "name": "proxy",
                    "restartPolicy": "Always",
                    "resources": {"requests": {"cpu": "1"}},
                },
                {"name": "setup", "resources": {"requests": {"cpu": "2"}}},
            ],
            "containers": [{"name": "app", "resources": {"requests": {"cpu": "500m"}}}],
            "overhead": {"cpu": "10m"},
        },
    }
    # Running: app + proxy = 1.5; during init: setup + proxy = 3; plus the overhead.
    assert pod_requests(sidecar) == {"cpu": 3010}


def test_schedule_spreads_and_respects_capacity() -> None:
    nodes = [node("a", cpu="2"), node("b", cpu="2"), node("c", cpu="500m")]
    placed: list[Obj] = []
    for i in range(6):
        decision = decide(pod(f"p{i}", "400m", "256Mi"), nodes, placed, seed=i)
        assert decision.node is not None
        placed.append(pod(f"p{i}", "400m", "256Mi", on=decision.node))
    counts = {n: sum(1 for p in placed if p["spec"]["nodeName"] == n) for n in "abc"}
    assert counts["c"] <= 1  # only one 400m pod fits in 500m
    assert abs(counts["a"] - counts["b"]) <= 1
    big = decide(pod("big", "3"), nodes, placed)
    assert big.node is None
    assert big.message == "0/3 nodes are available: 3 Insufficient cpu."


def test_flags() -> None:
    from controllers import controller_manager, node_agent, scheduler

    args = controller_manager.parse([])
    assert args.leader_elect is True
    assert (args.leader_elect_lease_duration, args.leader_elect_renew_deadline) == (15.0, 10.0)
    assert args.leader_elect_retry_period == 2.0
    assert args.leader_elect_resource_name == "kube-controller-manager"
    assert args.leader_elect_resource_namespace == "kube-system"
    assert (args.node_monitor_period, args.node_monitor_grace_period) == (5.0, 40.0)
    assert args.pod_eviction_timeout == 300.0
    assert args.controllers == [
        "nodelifecycle",
        "taint-eviction-controller",
        "replicaset",
        "deployment",
    ]
    args = controller_manager.parse(
        [
            "--leader-elect=false",
            "--pod-eviction-timeout",
            "1m30s",
            "--controllers",
            "*,-replicaset",
        ]
    )
    assert args.leader_elect is False and args.pod_eviction_timeout == 90.0
    assert args.controllers == ["nodelifecycle", "taint-eviction-controller", "deployment"]
    assert scheduler.parse([]).leader_elect_resource_name == "kube-scheduler"
    assert node_agent.parse(["--lease-renew-interval", "1.5s"]).lease_renew_interval == 1.5
    with pytest.raises(SystemExit):
        scheduler.parse(["--leader-elect-lease-duration", "5s"])  # not above renew 10s

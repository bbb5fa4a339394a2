"""The scheduler's filter and score steps, and the object helpers they use."""

from __future__ import annotations

import argparse
import random

import pytest

from controllers.controller_manager import enabled_controllers
from controllers.objects import (
    Obj,
    memory_bytes,
    milli_cpu,
    new_object,
    selector_matches,
    set_condition,
)
from controllers.scheduling import (
    Resources,
    balanced_allocation,
    filter_node,
    least_requested,
    pod_requests,
    schedule,
)
from kvstore.durations import parse_duration


def node(name: str, cpu: str = "4", memory: str = "8Gi", **spec: object) -> Obj:
    obj = new_object(
        "nodes",
        name,
        labels={"kubernetes.io/hostname": name, **spec.pop("labels", {})},  # type: ignore[dict-item]
        spec=dict(spec),
        status={"allocatable": {"cpu": cpu, "memory": memory, "pods": "10"}},
    )
    set_condition(obj, "Ready", "True", "KubeletReady")
    return obj


def pod(name: str, cpu: str | None = None, memory: str | None = None, **spec: object) -> Obj:
    requests = {}
    if cpu:
        requests["cpu"] = cpu
    if memory:
        requests["memory"] = memory
    container = {"name": "c", "resources": {"requests": requests}}
    return new_object("pods", name, spec={"containers": [container], **spec})


def bound(p: Obj, node_name: str) -> Obj:
    p["spec"]["nodeName"] = node_name
    return p


def test_quantities_and_durations() -> None:
    assert milli_cpu("500m") == 500
    assert milli_cpu("2") == 2000
    assert milli_cpu("1.5") == 1500
    assert memory_bytes("128Mi") == 128 * 2**20
    assert memory_bytes("1G") == 10**9
    assert memory_bytes("1024") == 1024
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


def test_controllers_flag() -> None:
    assert enabled_controllers("*") == ["nodelifecycle", "replicaset"]
    assert enabled_controllers("*,-replicaset") == ["nodelifecycle"]
    assert enabled_controllers("replicaset") == ["replicaset"]
    with pytest.raises(argparse.ArgumentTypeError):
        enabled_controllers("garbagecollector")


def test_requests_sum_containers_and_non_zero_defaults() -> None:
    p = pod("p", "250m", "1Gi")
    assert pod_requests(p) == Resources(250, 2**30, 1)
    empty = pod("e")
    assert pod_requests(empty) == Resources(0, 0, 1)
    assert pod_requests(empty, non_zero=True) == Resources(100, 200 * 2**20, 1)


def test_filter_resources() -> None:
    n = node("n", cpu="1", memory="1Gi")
    assert filter_node(pod("p", "500m", "512Mi"), n, Resources(400, 0, 1)) is None
    assert filter_node(pod("p", "700m"), n, Resources(400, 0, 1)) == "insufficient cpu"
    assert filter_node(pod("p", None, "600Mi"), n, Resources(0, 2**29, 1)) == (
        "insufficient memory"
    )
    assert filter_node(pod("p"), n, Resources(0, 0, 10)) == "too many pods"


def test_filter_readiness_selector_and_taints() -> None:
    n = node("n", labels={"disk": "ssd"}, taints=[{"key": "gpu", "effect": "NoSchedule"}])
    plain = pod("p")
    assert filter_node(plain, n, Resources()) == "untolerated taint gpu"
    tolerant = pod("t", tolerations=[{"key": "gpu", "operator": "Exists"}])
    assert filter_node(tolerant, n, Resources()) is None
    equal = pod("q", tolerations=[{"key": "gpu", "operator": "Equal", "value": "x"}])
    assert filter_node(equal, n, Resources()) == "untolerated taint gpu"
    wrong_effect = pod("w", tolerations=[{"operator": "Exists", "effect": "NoExecute"}])
    assert filter_node(wrong_effect, n, Resources()) == "untolerated taint gpu"
    selected = pod("s", nodeSelector={"disk": "hdd"}, tolerations=[{"operator": "Exists"}])
    assert filter_node(selected, n, Resources()) == "node selector mismatch"
    set_condition(n, "Ready", "Unknown", "NodeStatusUnknown")
    assert filter_node(tolerant, n, Resources()) == "node not ready"


def test_least_requested_prefers_the_emptier_node() -> None:
    p = pod("p", "1", "1Gi")
    n = node("n", cpu="4", memory="4Gi")
    assert least_requested(p, n, Resources()) == pytest.approx(75.0)
    assert least_requested(p, n, Resources(2000, 2 * 2**30, 2)) == pytest.approx(25.0)


def test_balanced_allocation_prefers_even_usage() -> None:
    p = pod("p", "1", "1Gi")
    n = node("n", cpu="4", memory="4Gi")
    assert balanced_allocation(p, n, Resources()) == pytest.approx(100.0)
    # cpu 3/4 requested, memory 1/4: standard deviation 0.25.
    assert balanced_allocation(p, n, Resources(2000, 0, 1)) == pytest.approx(75.0)


def test_schedule_spreads_and_respects_capacity() -> None:
    nodes = [node("a", cpu="2"), node("b", cpu="2"), node("c", cpu="500m")]
    placed: list[Obj] = []
    rng = random.Random(7)
    for i in range(6):
        decision = schedule(pod(f"p{i}", "400m", "256Mi"), nodes, placed, rng)
        assert decision.node is not None
        placed.append(bound(pod(f"p{i}", "400m", "256Mi"), decision.node))
    counts = {n: sum(1 for p in placed if p["spec"]["nodeName"] == n) for n in "abc"}
    assert counts["c"] <= 1  # only one 400m pod fits in 500m
    assert abs(counts["a"] - counts["b"]) <= 1
    big = schedule(pod("big", "3"), nodes, placed, rng)
    assert big.node is None
    assert set(big.reasons.values()) == {"insufficient cpu"}


def test_schedule_ties_break_among_the_best() -> None:
    nodes = [node("a"), node("b")]
    chosen = {schedule(pod("p"), nodes, [], random.Random(seed)).node for seed in range(20)}
    assert chosen == {"a", "b"}


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
    assert args.controllers == ["nodelifecycle", "replicaset"]
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
    assert args.controllers == ["nodelifecycle"]
    assert scheduler.parse([]).leader_elect_resource_name == "kube-scheduler"
    assert node_agent.parse(["--lease-renew-interval", "1.5s"]).lease_renew_interval == 1.5
    with pytest.raises(SystemExit):
        scheduler.parse(["--leader-elect-lease-duration", "5s"])  # not above renew 10s

"""Every score (priority), as a table: the node Kubernetes would pick, and the
plugin's normalised (0-100) scores where they show the arithmetic."""

from __future__ import annotations

from typing import Any

import pytest

from controllers.objects import Obj
from controllers.scheduling import WEIGHTS
from controllers.scheduling.resources import balanced_allocation, least_allocated, pod_requests
from tests.unit.scheduling_objects import chosen, decide, node, pod, term


def prefer_no_schedule(key: str) -> dict[str, str]:
    return {"key": key, "value": "v", "effect": "PreferNoSchedule"}


def preferred_node(*weighted: tuple[int, list[dict[str, Any]]]) -> dict[str, Any]:
    terms = [{"weight": w, "preference": {"matchExpressions": e}} for w, e in weighted]
    return {
        "affinity": {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": terms}}
    }


def preferred_pods(kind: str, *weighted: tuple[int, dict[str, Any]]) -> dict[str, Any]:
    terms = [{"weight": w, "podAffinityTerm": t} for w, t in weighted]
    return {"affinity": {kind: {"preferredDuringSchedulingIgnoredDuringExecution": terms}}}


def expr(key: str, operator: str, *values: str) -> dict[str, Any]:
    return {"key": key, "operator": operator, "values": list(values)}


# (id, pod, nodes, existing pods, plugin, its normalised scores or None, expected pick)
Case = tuple[str, Obj, list[Obj], list[Obj], str, dict[str, int] | None, set[str]]

TAINT_TOLERATION: list[Case] = [
    (
        "fewer intolerable PreferNoSchedule taints score higher",
        pod("p"),
        [
            node("n1", taints=[prefer_no_schedule("a"), prefer_no_schedule("b")]),
            node("n2", taints=[prefer_no_schedule("a")]),
            node("n3"),
        ],
        [],
        "TaintToleration",
        {"n1": 0, "n2": 50, "n3": 100},
        {"n3"},
    ),
    (
        "a tolerated PreferNoSchedule taint does not count",
        pod("p", tolerations=[{"key": "a", "operator": "Exists", "effect": "PreferNoSchedule"}]),
        [
            node("n1", taints=[prefer_no_schedule("a")]),
            node("n2", taints=[prefer_no_schedule("b")]),
        ],
        [],
        "TaintToleration",
        {"n1": 100, "n2": 0},
        {"n1"},
    ),
    (
        "only tolerations without an effect or with PreferNoSchedule count",
        pod("p", tolerations=[{"key": "a", "operator": "Exists", "effect": "NoSchedule"}]),
        [node("n1", taints=[prefer_no_schedule("a")]), node("n2")],
        [],
        "TaintToleration",
        {"n1": 0, "n2": 100},
        {"n2"},
    ),
    (
        "no PreferNoSchedule taint anywhere: every node 100",
        pod("p"),
        [node("n1"), node("n2")],
        [],
        "TaintToleration",
        {"n1": 100, "n2": 100},
        {"n1", "n2"},
    ),
]

NODE_AFFINITY: list[Case] = [
    (
        "the sum of the matching preferred terms' weights, scaled to the best node",
        pod(
            "p",
            **preferred_node((20, [expr("zone", "In", "a")]), (80, [expr("disk", "In", "ssd")])),
        ),
        [
            node("n1", labels={"zone": "a"}),
            node("n2", labels={"disk": "ssd"}),
            node("n3", labels={"zone": "a", "disk": "ssd"}),
            node("n4"),
        ],
        [],
        "NodeAffinity",
        {"n1": 20, "n2": 80, "n3": 100, "n4": 0},
        {"n3"},
    ),
    (
        "a node label preference outweighs a fuller node",
        pod("p", "500m", **preferred_node((1, [expr("gpu", "Exists")]))),
        [node("n1", labels={"gpu": "yes"}), node("n2")],
        [pod("busy", "2", on="n1")],
        "NodeAffinity",
        {"n1": 100, "n2": 0},
        {"n1"},
    ),
    (
        "weight 0 terms are ignored",
        pod("p", **preferred_node((0, [expr("zone", "In", "a")]))),
        [node("n1", labels={"zone": "a"}), node("n2")],
        [],
        "NodeAffinity",
        None,  # nothing to score: the step is skipped
        {"n1", "n2"},
    ),
]

RESOURCE_SCORES: list[Case] = [
    (
        "least allocated prefers the emptier node",
        pod("p", "1", "1Gi"),
        [node("n1", "4", "4Gi"), node("n2", "4", "4Gi")],
        [pod("busy", "2", "2Gi", on="n1")],
        "NodeResourcesFit",
        {"n1": 25, "n2": 75},
        {"n2"},
    ),
    (
        "a pod without requests counts 100m and 200Mi when scoring",
        pod("p"),
        [node("n1", "1", "1Gi"), node("n2", "1", "1Gi")],
        [pod("quiet", on="n1")],
        "NodeResourcesFit",
        {"n1": 70, "n2": 85},  # cpu 800/1000 -> 80, memory 624/1024 -> 60; 900 -> 90, 824 -> 80
        {"n2"},
    ),
    (
        "balanced allocation prefers even cpu and memory use",
        pod("p", "1", "1Gi"),
        [node("n1", "4", "4Gi"), node("n2", "4", "4Gi")],
        [pod("cpu-heavy", "2", on="n1"), pod("both", "1", "1Gi", on="n2")],
        "NodeResourcesBalancedAllocation",
        {"n1": 75, "n2": 100},  # n1: cpu 3/4, memory 1/4, std 0.25
        {"n2"},
    ),
    (
        "balanced allocation is skipped for a pod without requests",
        pod("p"),
        [node("n1"), node("n2")],
        [],
        "NodeResourcesBalancedAllocation",
        None,
        {"n1", "n2"},
    ),
]

WEB, CACHE = {"app": "web"}, {"app": "cache"}
ZONED = [
    node("n1", labels={"zone": "a"}),
    node("n2", labels={"zone": "a"}),
    node("n3", labels={"zone": "b"}),
]
INTER_POD: list[Case] = [
    (
        "preferred affinity to a cache pod's host",
        pod("p", labels=WEB, **preferred_pods("podAffinity", (50, term(CACHE)))),
        ZONED,
        [pod("cache", labels=CACHE, on="n2")],
        "InterPodAffinity",
        {"n1": 0, "n2": 100, "n3": 0},
        {"n2"},
    ),
    (
        "preferred anti-affinity: min-max normalisation over negative sums",
        pod(
            "p",
            labels=WEB,
            **preferred_pods("podAntiAffinity", (50, term(WEB, "zone")), (25, term(WEB))),
        ),
        ZONED,
        [pod("w1", labels=WEB, on="n1")],
        "InterPodAffinity",
        {"n1": 0, "n2": 33, "n3": 100},  # raw -75, -50, 0
        {"n3"},
    ),
    (
        "an existing pod's preferred affinity draws the pod",
        pod("p", labels=WEB),
        ZONED,
        [pod("fan", on="n3", **preferred_pods("podAffinity", (100, term(WEB))))],
        "InterPodAffinity",
        {"n1": 0, "n2": 0, "n3": 100},
        {"n3"},
    ),
    (
        "an existing pod's required affinity counts with the hard weight",
        pod("p", labels=WEB),
        ZONED,
        [
            pod(
                "needy",
                on="n1",
                affinity={
                    "podAffinity": {
                        "requiredDuringSchedulingIgnoredDuringExecution": [term(WEB, "zone")]
                    }
                },
            )
        ],
        "InterPodAffinity",
        {"n1": 100, "n2": 100, "n3": 0},
        {"n2"},  # the zone of the needy pod; its own node is the fuller one
    ),
    (
        "an existing pod's preferred anti-affinity pushes the pod away",
        pod("p", labels=WEB),
        ZONED,
        [pod("shy", on="n1", **preferred_pods("podAntiAffinity", (10, term(WEB, "zone"))))],
        "InterPodAffinity",
        {"n1": 0, "n2": 0, "n3": 100},
        {"n3"},
    ),
    (
        "no affinity terms anywhere: skipped",
        pod("p"),
        ZONED,
        [pod("other", labels=CACHE, on="n1")],
        "InterPodAffinity",
        None,
        {"n2", "n3"},
    ),
]


def run(case: Case) -> None:
    _, subject, nodes, existing, plugin, scores, expected = case
    decision = decide(subject, nodes, existing)
    assert decision.plugin_scores.get(plugin) == scores, decision.plugin_scores
    assert chosen(subject, nodes, existing) == expected


@pytest.mark.parametrize("case", TAINT_TOLERATION, ids=[c[0] for c in TAINT_TOLERATION])
def test_taint_toleration_priority(case: Case) -> None:
    run(case)


@pytest.mark.parametrize("case", NODE_AFFINITY, ids=[c[0] for c in NODE_AFFINITY])
def test_node_affinity_priority(case: Case) -> None:
    run(case)


@pytest.mark.parametrize("case", RESOURCE_SCORES, ids=[c[0] for c in RESOURCE_SCORES])
def test_least_requested_and_balanced_allocation(case: Case) -> None:
    run(case)


@pytest.mark.parametrize("case", INTER_POD, ids=[c[0] for c in INTER_POD])
def test_inter_pod_affinity_priority(case: Case) -> None:
    run(case)


def test_default_weights() -> None:
    assert WEIGHTS == {
        "TaintToleration": 3,
        "NodeAffinity": 2,
        "NodeResourcesFit": 1,
        "InterPodAffinity": 2,
        "NodeResourcesBalancedAllocation": 1,
    }


def test_weights_decide_between_scores() -> None:
    """n1 is the preferred node (NodeAffinity 100 x 2) but has a PreferNoSchedule taint
    (TaintToleration 0 x 3 against n2's 100 x 3): the taint weighs more."""
    subject = pod("p", "100m", "128Mi", **preferred_node((100, [expr("disk", "In", "ssd")])))
    nodes = [node("n1", labels={"disk": "ssd"}, taints=[prefer_no_schedule("x")]), node("n2")]
    decision = decide(subject, nodes)
    assert decision.node == "n2"
    resources = (
        decision.plugin_scores["NodeResourcesFit"]["n1"]
        + decision.plugin_scores["NodeResourcesBalancedAllocation"]["n1"]
    )
    assert decision.scores == {"n1": 0 * 3 + 100 * 2 + resources, "n2": 100 * 3 + 0 * 2 + resources}


def test_integer_arithmetic_as_kubernetes() -> None:
    assert least_allocated({"cpu": 1000, "memory": 2**30}, {"cpu": 3000, "memory": 3 * 2**30}) == 66
    assert least_allocated({"cpu": 5000, "memory": 0}, {"cpu": 4000, "memory": 2**30}) == 50
    assert balanced_allocation({"cpu": 1000, "memory": 0}, {"cpu": 3000, "memory": 2**30}) == 83
    # Explicit zero requests stay zero; only missing ones take the scoring defaults.
    explicit = {
        **pod("p"),
        "spec": {"containers": [{"name": "c", "resources": {"requests": {"cpu": "0"}}}]},
    }
    assert pod_requests(explicit, non_zero=True) == {"cpu": 0, "memory": 200 * 2**20}


def test_ties_are_broken_at_random() -> None:
    assert chosen(pod("p", "1"), [node("a"), node("b"), node("c")]) == {"a", "b", "c"}

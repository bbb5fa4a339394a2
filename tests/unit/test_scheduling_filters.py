"""Every filter (predicate), as a table: the node(s) Kubernetes would pick for the
pod, or "unschedulable" with kube-scheduler's message.

Where the filter leaves several nodes that score the same, the expected set is
all of them (ties are broken at random; ``chosen`` tries many seeds).
"""

from __future__ import annotations

from typing import Any

import pytest

from controllers.objects import Obj
from tests.unit.scheduling_objects import chosen, decide, node, pod, term

TWO = [node("n1"), node("n2")]
ZONES = [
    node("n1", labels={"zone": "a"}),
    node("n2", labels={"zone": "a"}),
    node("n3", labels={"zone": "b"}),
]


def affinity(**sections: Any) -> dict[str, Any]:
    return {"affinity": sections}


def required(*terms: dict[str, Any]) -> dict[str, Any]:
    return {"requiredDuringSchedulingIgnoredDuringExecution": list(terms)}


def node_terms(*terms: dict[str, Any]) -> dict[str, Any]:
    selector = {"nodeSelectorTerms": list(terms)}
    return {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": selector}}


def expr(key: str, operator: str, *values: str) -> dict[str, Any]:
    return {"key": key, "operator": operator, "values": list(values)}


Case = tuple[str, Obj, list[Obj], list[Obj], set[str] | str]

NODE_UNSCHEDULABLE: list[Case] = [
    ("cordoned node skipped", pod("p"), [node("n1", unschedulable=True), node("n2")], [], {"n2"}),
    (
        "tolerating the unschedulable taint",
        pod("p", tolerations=[{"key": "node.kubernetes.io/unschedulable", "operator": "Exists"}]),
        [node("n1", unschedulable=True), node("n2", unschedulable=True)],
        [],
        {"n1", "n2"},
    ),
    (
        "every node cordoned",
        pod("p"),
        [node("n1", unschedulable=True), node("n2", unschedulable=True)],
        [],
        "0/2 nodes are available: 2 node(s) were unschedulable.",
    ),
]

GPU = {"key": "gpu", "value": "true", "effect": "NoSchedule"}
DISK = {"key": "disk", "value": "slow", "effect": "NoSchedule"}
TAINTS: list[Case] = [
    (
        "NoSchedule taint not tolerated",
        pod("p"),
        [node("n1", taints=[GPU]), node("n2")],
        [],
        {"n2"},
    ),
    (
        "Exists toleration by key",
        pod("p", tolerations=[{"key": "gpu", "operator": "Exists"}]),
        [node("n1", taints=[GPU]), node("n2", taints=[DISK])],
        [],
        {"n1"},
    ),
    (
        "Equal toleration with the same value",
        pod("p", tolerations=[{"key": "gpu", "operator": "Equal", "value": "true"}]),
        [node("n1", taints=[GPU]), node("n2", taints=[DISK])],
        [],
        {"n1"},
    ),
    (
        "Equal toleration with another value",
        pod("p", tolerations=[{"key": "gpu", "value": "false"}]),
        [node("n1", taints=[GPU]), node("n2", taints=[DISK])],
        [],
        "0/2 nodes are available: 2 node(s) had untolerated taint(s).",
    ),
    (
        "toleration for another effect",
        pod("p", tolerations=[{"key": "gpu", "operator": "Exists", "effect": "NoExecute"}]),
        [node("n1", taints=[GPU]), node("n2", taints=[DISK])],
        [],
        "0/2 nodes are available: 2 node(s) had untolerated taint(s).",
    ),
    (
        "empty key with Exists tolerates every taint",
        pod("p", tolerations=[{"operator": "Exists"}]),
        [node("n1", taints=[GPU]), node("n2", taints=[DISK])],
        [],
        {"n1", "n2"},
    ),
    (
        "NoExecute taints filter too",
        pod("p"),
        [node("n1", taints=[{"key": "x", "effect": "NoExecute"}]), node("n2")],
        [],
        {"n2"},
    ),
    (
        "PreferNoSchedule does not filter",
        pod("p"),
        [node("n1", taints=[{"key": "x", "effect": "PreferNoSchedule"}])],
        [],
        {"n1"},
    ),
]

LABELLED = [
    node("n1", labels={"zone": "a", "disk": "ssd", "cores": "8"}),
    node("n2", labels={"zone": "b", "disk": "hdd", "cores": "16", "gpu": "yes"}),
]
NODE_AFFINITY: list[Case] = [
    ("nodeSelector", pod("p", nodeSelector={"disk": "ssd"}), LABELLED, [], {"n1"}),
    (
        "nodeSelector matching no node",
        pod("p", nodeSelector={"disk": "nvme"}),
        LABELLED,
        [],
        "0/2 nodes are available: 2 node(s) didn't match Pod's node affinity/selector.",
    ),
    (
        "In",
        pod("p", **affinity(**node_terms({"matchExpressions": [expr("zone", "In", "b", "c")]}))),
        LABELLED,
        [],
        {"n2"},
    ),
    (
        "NotIn",
        pod("p", **affinity(**node_terms({"matchExpressions": [expr("zone", "NotIn", "a")]}))),
        LABELLED,
        [],
        {"n2"},
    ),
    (
        "NotIn matches a node without the label",
        pod("p", **affinity(**node_terms({"matchExpressions": [expr("gpu", "NotIn", "yes")]}))),
        LABELLED,
        [],
        {"n1"},
    ),
    (
        "Exists",
        pod("p", **affinity(**node_terms({"matchExpressions": [expr("gpu", "Exists")]}))),
        LABELLED,
        [],
        {"n2"},
    ),
    (
        "DoesNotExist",
        pod("p", **affinity(**node_terms({"matchExpressions": [expr("gpu", "DoesNotExist")]}))),
        LABELLED,
        [],
        {"n1"},
    ),
    (
        "Gt",
        pod("p", **affinity(**node_terms({"matchExpressions": [expr("cores", "Gt", "8")]}))),
        LABELLED,
        [],
        {"n2"},
    ),
    (
        "Lt",
        pod("p", **affinity(**node_terms({"matchExpressions": [expr("cores", "Lt", "10")]}))),
        LABELLED,
        [],
        {"n1"},
    ),
    (
        "Gt on a label that is not a number",
        pod("p", **affinity(**node_terms({"matchExpressions": [expr("disk", "Gt", "1")]}))),
        LABELLED,
        [],
        "0/2 nodes are available: 2 node(s) didn't match Pod's node affinity/selector.",
    ),
    (
        "expressions of a term are ANDed",
        pod(
            "p",
            **affinity(
                **node_terms(
                    {"matchExpressions": [expr("zone", "In", "a"), expr("disk", "In", "hdd")]}
                )
            ),
        ),
        LABELLED,
        [],
        "0/2 nodes are available: 2 node(s) didn't match Pod's node affinity/selector.",
    ),
    (
        "terms are ORed",
        pod(
            "p",
            **affinity(
                **node_terms(
                    {"matchExpressions": [expr("zone", "In", "x")]},
                    {"matchExpressions": [expr("disk", "In", "hdd")]},
                )
            ),
        ),
        LABELLED,
        [],
        {"n2"},
    ),
    (
        "an empty term matches nothing",
        pod("p", **affinity(**node_terms({}))),
        LABELLED,
        [],
        "0/2 nodes are available: 2 node(s) didn't match Pod's node affinity/selector.",
    ),
    (
        "matchFields on the node name",
        pod("p", **affinity(**node_terms({"matchFields": [expr("metadata.name", "In", "n2")]}))),
        LABELLED,
        [],
        {"n2"},
    ),
    (
        "nodeSelector and affinity must both hold",
        pod(
            "p",
            nodeSelector={"disk": "ssd"},
            **affinity(**node_terms({"matchExpressions": [expr("gpu", "Exists")]})),
        ),
        LABELLED,
        [],
        "0/2 nodes are available: 2 node(s) didn't match Pod's node affinity/selector.",
    ),
]

RESOURCES: list[Case] = [
    ("cpu", pod("p", "2"), [node("n1", cpu="1"), node("n2", cpu="4")], [], {"n2"}),
    (
        "what bound pods request is taken",
        pod("p", "600m"),
        [node("n1", cpu="4"), node("n2", cpu="1")],
        [pod("big", "3500m", on="n1")],
        {"n2"},
    ),
    ("memory", pod("p", None, "6Gi"), [node("n1", memory="4Gi"), node("n2")], [], {"n2"}),
    (
        "pod count",
        pod("p"),
        [node("n1", pods=1), node("n2", pods=1)],
        [pod("a", on="n1"), pod("b", on="n2")],
        "0/2 nodes are available: 2 Too many pods.",
    ),
    (
        "every lacking resource is a reason",
        pod("p", "8", "16Gi"),
        TWO,
        [],
        "0/2 nodes are available: 2 Insufficient cpu, 2 Insufficient memory.",
    ),
    (
        "extended resources",
        {
            **pod("p"),
            "spec": {
                "containers": [{"name": "c", "resources": {"limits": {"example.com/gpu": "1"}}}]
            },
        },
        [node("n1"), node("n2", extra={"example.com/gpu": "2"})],
        [],
        {"n2"},
    ),
    (
        "a limit without a request requests the limit",
        {
            **pod("p"),
            "spec": {"containers": [{"name": "c", "resources": {"limits": {"cpu": "3"}}}]},
        },
        [node("n1", cpu="2"), node("n2")],
        [],
        {"n2"},
    ),
    (
        "an init container needing more than the containers",
        {
            **pod("p"),
            "spec": {
                "initContainers": [{"name": "i", "resources": {"requests": {"cpu": "3"}}}],
                "containers": [{"name": "c", "resources": {"requests": {"cpu": "100m"}}}],
            },
        },
        [node("n1", cpu="2"), node("n2")],
        [],
        {"n2"},
    ),
    (
        "no requests fit anywhere",
        pod("p"),
        [node("n1", cpu="1"), node("n2", cpu="1")],
        [pod("big", "1", on="n1"), pod("big2", "1", on="n2")],
        {"n1", "n2"},
    ),
]


def disk(kind: str, read_only: bool = False, **fields: Any) -> dict[str, Any]:
    return {"name": "data", kind: {**fields, "readOnly": read_only}}


def with_volumes(name: str, *volumes: dict[str, Any], on: str | None = None) -> Obj:
    return pod(name, on=on, volumes=list(volumes))


ONE = [node("n1")]
NO_DISK = "0/1 nodes are available: 1 node(s) had no available disk."
PD: dict[str, Any] = {"pdName": "pd-1", "fsType": "ext4"}
RBD: dict[str, Any] = {"monitors": ["10.0.0.1:6789", "10.0.0.2:6789"], "image": "img"}
VOLUMES: list[Case] = [
    (
        "GCE PD read-write twice",
        with_volumes("p", disk("gcePersistentDisk", **PD)),
        TWO,
        [with_volumes("q", disk("gcePersistentDisk", **PD), on="n1")],
        {"n2"},
    ),
    (
        "GCE PD read-only twice",
        with_volumes("p", disk("gcePersistentDisk", True, **PD)),
        ONE,
        [with_volumes("q", disk("gcePersistentDisk", True, **PD), on="n1")],
        {"n1"},
    ),
    (
        "GCE PD, only one mount read-only",
        with_volumes("p", disk("gcePersistentDisk", True, **PD)),
        ONE,
        [with_volumes("q", disk("gcePersistentDisk", **PD), on="n1")],
        NO_DISK,
    ),
    (
        "GCE PD, another disk",
        with_volumes("p", disk("gcePersistentDisk", pdName="pd-2")),
        ONE,
        [with_volumes("q", disk("gcePersistentDisk", **PD), on="n1")],
        {"n1"},
    ),
    (
        "AWS EBS, even read-only",
        with_volumes("p", disk("awsElasticBlockStore", True, volumeID="vol-1")),
        ONE,
        [with_volumes("q", disk("awsElasticBlockStore", True, volumeID="vol-1"), on="n1")],
        NO_DISK,
    ),
    (
        "iSCSI, same IQN read-write",
        with_volumes("p", disk("iscsi", iqn="iqn.2024-01.example:t", lun=0)),
        ONE,
        [with_volumes("q", disk("iscsi", iqn="iqn.2024-01.example:t", lun=0), on="n1")],
        NO_DISK,
    ),
    (
        "iSCSI, same IQN read-only",
        with_volumes("p", disk("iscsi", True, iqn="iqn.2024-01.example:t")),
        ONE,
        [with_volumes("q", disk("iscsi", True, iqn="iqn.2024-01.example:t"), on="n1")],
        {"n1"},
    ),
    (
        "RBD, overlapping monitors, default pool",
        with_volumes("p", disk("rbd", **RBD)),
        ONE,
        [
            with_volumes(
                "q", disk("rbd", monitors=["10.0.0.2:6789"], pool="rbd", image="img"), on="n1"
            )
        ],
        NO_DISK,
    ),
    (
        "RBD, another image",
        with_volumes("p", disk("rbd", **RBD)),
        ONE,
        [with_volumes("q", disk("rbd", monitors=RBD["monitors"], image="other"), on="n1")],
        {"n1"},
    ),
    (
        "hostPath never conflicts (as in Kubernetes)",
        with_volumes("p", {"name": "data", "hostPath": {"path": "/data"}}),
        ONE,
        [with_volumes("q", {"name": "data", "hostPath": {"path": "/data"}}, on="n1")],
        {"n1"},
    ),
]


def with_affinity(
    name: str, labels: dict[str, str] | None = None, on: str | None = None, **sections: Any
) -> Obj:
    return pod(name, labels=labels, on=on, **affinity(**sections))


DB = {"app": "db"}
WEB = {"app": "web"}
INTER_POD: list[Case] = [
    (
        "affinity to a zone holding the selected pod",
        with_affinity("p", podAffinity=required(term(DB, "zone"))),
        ZONES,
        [pod("db", labels=DB, on="n3")],
        {"n3"},
    ),
    (
        "affinity: the emptier node of the right zone",
        with_affinity("p", podAffinity=required(term(DB, "zone"))),
        ZONES,
        [pod("db", labels=DB, on="n1")],
        {"n2"},
    ),
    (
        "affinity: the first pod of a group that wants to be together",
        with_affinity("p", WEB, podAffinity=required(term(WEB, "zone"))),
        ZONES,
        [],
        {"n1", "n2", "n3"},
    ),
    (
        "affinity to pods that exist nowhere",
        with_affinity("p", WEB, podAffinity=required(term(DB, "zone"))),
        ZONES,
        [],
        "0/3 nodes are available: 3 node(s) didn't match pod affinity rules.",
    ),
    (
        "affinity needs the topology label on the node",
        with_affinity("p", podAffinity=required(term(DB, "rack"))),
        ZONES,
        [pod("db", labels=DB, on="n1")],
        "0/3 nodes are available: 3 node(s) didn't match pod affinity rules.",
    ),
    (
        "affinity only in the pod's own namespace by default",
        with_affinity("p", podAffinity=required(term(DB, "zone"))),
        ZONES,
        [pod("db", labels=DB, namespace="other", on="n3")],
        "0/3 nodes are available: 3 node(s) didn't match pod affinity rules.",
    ),
    (
        "affinity to pods of the namespaces listed",
        with_affinity("p", podAffinity=required(term(DB, "zone", namespaces=["other"]))),
        ZONES,
        [pod("db", labels=DB, namespace="other", on="n3")],
        {"n3"},
    ),
    (
        "affinity to pods of every namespace (empty namespaceSelector)",
        with_affinity("p", podAffinity=required(term(DB, "zone", namespaceSelector={}))),
        ZONES,
        [pod("db", labels=DB, namespace="other", on="n3")],
        {"n3"},
    ),
    (
        "namespaceSelector on the namespace name label",
        with_affinity(
            "p",
            podAffinity=required(
                term(
                    DB,
                    "zone",
                    namespaceSelector={"matchLabels": {"kubernetes.io/metadata.name": "other"}},
                )
            ),
        ),
        ZONES,
        [pod("db", labels=DB, namespace="other", on="n3"), pod("db", labels=DB, on="n1")],
        {"n3"},
    ),
    (
        "anti-affinity per host",
        with_affinity("p", WEB, podAntiAffinity=required(term(WEB))),
        ZONES,
        [pod("w1", labels=WEB, on="n1"), pod("w2", labels=WEB, on="n2")],
        {"n3"},
    ),
    (
        "anti-affinity per zone",
        with_affinity("p", WEB, podAntiAffinity=required(term(WEB, "zone"))),
        ZONES,
        [pod("w1", labels=WEB, on="n1")],
        {"n3"},
    ),
    (
        "anti-affinity everywhere",
        with_affinity("p", WEB, podAntiAffinity=required(term(WEB, "zone"))),
        ZONES,
        [pod("w1", labels=WEB, on="n1"), pod("w3", labels=WEB, on="n3")],
        "0/3 nodes are available: 3 node(s) didn't match pod anti-affinity rules.",
    ),
    (
        "anti-affinity ignores nodes without the topology label",
        with_affinity("p", WEB, podAntiAffinity=required(term(WEB, "rack"))),
        ZONES,
        [pod("w1", labels=WEB, on="n1")],
        {"n2", "n3"},
    ),
    (
        "an existing pod's anti-affinity keeps the pod away",
        pod("p", labels=WEB),
        ZONES,
        [with_affinity("lonely", on="n3", podAntiAffinity=required(term(WEB, "zone")))],
        {"n1", "n2"},
    ),
    (
        "matchLabelKeys narrows the selector to the pod's own value",
        with_affinity(
            "p",
            {"app": "web", "version": "2"},
            podAntiAffinity=required(term(WEB, matchLabelKeys=["version"])),
        ),
        [node("n1"), node("n2")],
        [
            pod("old", labels={"app": "web", "version": "1"}, on="n1"),
            pod("same", labels={"app": "web", "version": "2"}, on="n2"),
        ],
        {"n1"},
    ),
]


def run(case: Case) -> None:
    _, subject, nodes, existing, expected = case
    assert chosen(subject, nodes, existing) == expected


@pytest.mark.parametrize("case", NODE_UNSCHEDULABLE, ids=[c[0] for c in NODE_UNSCHEDULABLE])
def test_node_unschedulable(case: Case) -> None:
    run(case)


@pytest.mark.parametrize("case", TAINTS, ids=[c[0] for c in TAINTS])
def test_pod_tolerates_node_taints(case: Case) -> None:
    run(case)


@pytest.mark.parametrize("case", NODE_AFFINITY, ids=[c[0] for c in NODE_AFFINITY])
def test_node_selector_and_affinity(case: Case) -> None:
    run(case)


@pytest.mark.parametrize("case", RESOURCES, ids=[c[0] for c in RESOURCES])
def test_pod_fits_resources(case: Case) -> None:
    run(case)


@pytest.mark.parametrize("case", VOLUMES, ids=[c[0] for c in VOLUMES])
def test_no_disk_conflict(case: Case) -> None:
    run(case)


@pytest.mark.parametrize("case", INTER_POD, ids=[c[0] for c in INTER_POD])
def test_inter_pod_affinity(case: Case) -> None:
    run(case)


def test_pods_assumed_in_the_same_pass_count() -> None:
    """Three replicas with host anti-affinity, placed one after another: each decision
    sees the ones before it, so they land on three nodes and a fourth fits nowhere."""
    placed: list[Obj] = []
    for i in range(3):
        replica = with_affinity(f"w{i}", WEB, podAntiAffinity=required(term(WEB)))
        decision = decide(replica, ZONES, placed, seed=i)
        assert decision.node is not None, decision.message
        replica["spec"]["nodeName"] = decision.node
        placed.append(replica)
    assert {p["spec"]["nodeName"] for p in placed} == {"n1", "n2", "n3"}
    fourth = decide(with_affinity("w3", WEB, podAntiAffinity=required(term(WEB))), ZONES, placed)
    assert fourth.message == (
        "0/3 nodes are available: 3 node(s) didn't match pod anti-affinity rules."
    )


def test_a_node_fails_at_its_first_filter_and_reasons_are_counted() -> None:
    nodes = [
        node("n1", unschedulable=True, cpu="1"),
        node("n2", taints=[GPU], cpu="1"),
        node("n3", cpu="1"),
        node("n4", cpu="1", labels={"zone": "a"}),
    ]
    decision = decide(pod("p", "2", nodeSelector={"zone": "a"}), nodes)
    assert decision.node is None
    assert decision.reasons == {
        "n1": ["node(s) were unschedulable"],
        "n2": ["node(s) had untolerated taint(s)"],
        "n3": ["node(s) didn't match Pod's node affinity/selector"],
        "n4": ["Insufficient cpu"],
    }
    assert decision.message == (
        "0/4 nodes are available: 1 Insufficient cpu, 1 node(s) didn't match Pod's node "
        "affinity/selector, 1 node(s) had untolerated taint(s), 1 node(s) were unschedulable."
    )

"""Builders for the scheduling tables: nodes and pods as Kubernetes writes them."""

from __future__ import annotations

import random
from typing import Any

from controllers.objects import Obj, new_object, set_condition
from controllers.scheduling import Decision, schedule, snapshot


def node(
    name: str,
    cpu: str = "4",
    memory: str = "8Gi",
    *,
    pods: int = 110,
    labels: dict[str, str] | None = None,
    taints: list[dict[str, str]] | None = None,
    unschedulable: bool = False,
    extra: dict[str, str] | None = None,
) -> Obj:
    allocatable = {"cpu": cpu, "memory": memory, "pods": str(pods), **(extra or {})}
    spec: dict[str, Any] = {"taints": taints or []}
    if unschedulable:
        spec["unschedulable"] = True
    obj = new_object(
        "nodes",
        name,
        labels={"kubernetes.io/hostname": name, **(labels or {})},
        spec=spec,
        status={"allocatable": allocatable, "capacity": dict(allocatable)},
    )
    set_condition(obj, "Ready", "True", "KubeletReady")
    return obj


def pod(
    name: str,
    cpu: str | None = None,
    memory: str | None = None,
    *,
    namespace: str = "default",
    labels: dict[str, str] | None = None,
    on: str | None = None,
    **spec: Any,
) -> Obj:
    requests = {}
    if cpu:
        requests["cpu"] = cpu
    if memory:
        requests["memory"] = memory
    container = {"name": "c", "image": "example/app:1", "resources": {"requests": requests}}
    obj = new_object(
        "pods", name, namespace, labels=labels, spec={"containers": [container], **spec}
    )
    if on is not None:
        obj["spec"]["nodeName"] = on
    return obj


def term(
    selector: dict[str, str], topology: str = "kubernetes.io/hostname", **extra: Any
) -> dict[str, Any]:
    """A PodAffinityTerm selecting pods by matchLabels."""
    return {"labelSelector": {"matchLabels": selector}, "topologyKey": topology, **extra}


def decide(
    subject: Obj, nodes: list[Obj], existing: list[Obj] | None = None, seed: int = 1
) -> Decision:
    return schedule(subject, snapshot(nodes, existing or []), random.Random(seed))


def chosen(subject: Obj, nodes: list[Obj], existing: list[Obj] | None = None) -> set[str] | str:
    """Every node the scheduler picks over many tie-breaks, or the failure message."""
    picks = set()
    for seed in range(12):
        decision = decide(subject, nodes, existing, seed)
        if decision.node is None:
            return decision.message
        picks.add(decision.node)
    return picks

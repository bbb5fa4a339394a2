"""The scheduler's algorithm, pure: filter nodes, score them, pick one.

Filters (a node must pass all): Ready and schedulable, the pod tolerates
every NoSchedule taint, ``spec.nodeSelector`` matches the node's labels, and
the pod's cpu/memory requests fit the node's allocatable minus what pods
already bound (or assumed) there request, and the pod count is below
``allocatable.pods``.

Scores (0-100 each, summed with weight 1, as kube-scheduler's defaults):
least-requested (the mean free fraction of cpu and memory after placing the
pod) and balanced-allocation (100 * (1 - the standard deviation of the cpu and
memory fractions requested)). For scoring only, a pod with no requests counts
as 100m cpu and 200Mi memory, so such pods still spread out.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass

from controllers.objects import Obj, labels_of, memory_bytes, milli_cpu, name_of, node_ready

DEFAULT_MILLI_CPU = 100
DEFAULT_MEMORY = 200 * 2**20
MAX_SCORE = 100.0


@dataclass(frozen=True)
class Resources:
    milli_cpu: int = 0
    memory: int = 0
    pods: int = 0

    def __add__(self, other: Resources) -> Resources:
        return Resources(
            self.milli_cpu + other.milli_cpu, self.memory + other.memory, self.pods + other.pods
        )


def pod_requests(pod: Obj, *, non_zero: bool = False) -> Resources:
    """Sum of the containers' requests (with ``non_zero``: scoring defaults for missing ones)."""
    cpu = memory = 0
    for container in (pod.get("spec") or {}).get("containers") or []:
        requests = (container.get("resources") or {}).get("requests") or {}
        c = milli_cpu(requests["cpu"]) if "cpu" in requests else 0
        m = memory_bytes(requests["memory"]) if "memory" in requests else 0
        if non_zero:
            c = c or DEFAULT_MILLI_CPU
            m = m or DEFAULT_MEMORY
        cpu, memory = cpu + c, memory + m
    if non_zero and cpu == 0 and memory == 0:
        cpu, memory = DEFAULT_MILLI_CPU, DEFAULT_MEMORY
    return Resources(cpu, memory, 1)


def allocatable(node: Obj) -> Resources:
    status = node.get("status") or {}
    values = status.get("allocatable") or status.get("capacity") or {}
    return Resources(
        milli_cpu(values.get("cpu", 0)),
        memory_bytes(values.get("memory", 0)),
        int(values.get("pods", 110)),
    )


def tolerates(pod: Obj, taint: dict[str, str]) -> bool:
    for toleration in (pod.get("spec") or {}).get("tolerations") or []:
        effect = toleration.get("effect", "")
        if effect and effect != taint.get("effect"):
            continue
        operator = toleration.get("operator", "Equal")
        key = toleration.get("key", "")
        if operator == "Exists" and (not key or key == taint.get("key")):
            return True
        if (
            operator == "Equal"
            and key == taint.get("key")
            and toleration.get("value", "") == taint.get("value", "")
        ):
            return True
    return False


def filter_node(pod: Obj, node: Obj, used: Resources) -> str | None:
    """None if the pod may go to the node, else why not."""
    if not node_ready(node):
        return "node not ready"
    if (node.get("spec") or {}).get("unschedulable"):
        return "node unschedulable"
    for taint in (node.get("spec") or {}).get("taints") or []:
        if taint.get("effect") == "NoSchedule" and not tolerates(pod, taint):
            return f"untolerated taint {taint.get('key')}"
    labels = labels_of(node)
    for key, value in ((pod.get("spec") or {}).get("nodeSelector") or {}).items():
        if labels.get(key) != value:
            return "node selector mismatch"
    free = allocatable(node)
    wanted = pod_requests(pod)
    if used.pods + 1 > free.pods:
        return "too many pods"
    if used.milli_cpu + wanted.milli_cpu > free.milli_cpu:
        return "insufficient cpu"
    if used.memory + wanted.memory > free.memory:
        return "insufficient memory"
    return None


def _fraction(requested: int, capacity: int) -> float:
    return min(requested / capacity, 1.0) if capacity > 0 else 1.0


def least_requested(pod: Obj, node: Obj, used_non_zero: Resources) -> float:
    alloc = allocatable(node)
    total = used_non_zero + pod_requests(pod, non_zero=True)
    cpu = 1.0 - _fraction(total.milli_cpu, alloc.milli_cpu)
    memory = 1.0 - _fraction(total.memory, alloc.memory)
    return MAX_SCORE * (cpu + memory) / 2


def balanced_allocation(pod: Obj, node: Obj, used_non_zero: Resources) -> float:
    alloc = allocatable(node)
    total = used_non_zero + pod_requests(pod, non_zero=True)
    cpu = _fraction(total.milli_cpu, alloc.milli_cpu)
    memory = _fraction(total.memory, alloc.memory)
    std = abs(cpu - memory) / 2  # the standard deviation of two values
    return MAX_SCORE * (1.0 - std)


def score(pod: Obj, node: Obj, used_non_zero: Resources) -> float:
    return least_requested(pod, node, used_non_zero) + balanced_allocation(pod, node, used_non_zero)


@dataclass
class Decision:
    node: str | None
    scores: dict[str, float]
    reasons: dict[str, str]


def usage(pods: Iterable[Obj], *, non_zero: bool = False) -> dict[str, Resources]:
    """What the given (bound) pods request, per node."""
    per_node: dict[str, Resources] = {}
    for pod in pods:
        node = (pod.get("spec") or {}).get("nodeName")
        if node:
            per_node[node] = per_node.get(node, Resources()) + pod_requests(pod, non_zero=non_zero)
    return per_node


def schedule(
    pod: Obj, nodes: Iterable[Obj], bound: list[Obj], rng: random.Random | None = None
) -> Decision:
    """Pick the best feasible node (ties broken at random), or None with the reasons."""
    used = usage(bound)
    used_scoring = usage(bound, non_zero=True)
    scores: dict[str, float] = {}
    reasons: dict[str, str] = {}
    for node in nodes:
        name = name_of(node)
        reason = filter_node(pod, node, used.get(name, Resources()))
        if reason is not None:
            reasons[name] = reason
            continue
        scores[name] = score(pod, node, used_scoring.get(name, Resources()))
    if not scores:
        return Decision(None, scores, reasons)
    best = max(scores.values())
    top = sorted(name for name, s in scores.items() if best - s < 1e-9)
    return Decision((rng or random).choice(top), scores, reasons)

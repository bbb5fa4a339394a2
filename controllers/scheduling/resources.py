"""Requests and allocatable resources; the NodeResourcesFit filter and the
LeastAllocated and BalancedAllocation scores (kube-scheduler's
NodeResourcesFit and NodeResourcesBalancedAllocation plugins).

Resources are integers keyed by name: ``cpu`` in millicores, everything else
(``memory``, ``ephemeral-storage``, extended resources such as
``example.com/gpu``) in units, rounded up as Quantity.Value() does.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from controllers.objects import Obj, integer_value, milli_value

CPU, MEMORY, EPHEMERAL_STORAGE, PODS = "cpu", "memory", "ephemeral-storage", "pods"
# What a container that requests nothing counts as when scoring (kube-scheduler's
# DefaultMilliCPURequest and DefaultMemoryRequest), so such pods still spread out.
DEFAULT_MILLI_CPU = 100
DEFAULT_MEMORY = 200 * 2**20
MAX_NODE_SCORE = 100
SCORED = (CPU, MEMORY)  # the resources both scores look at, each with weight 1

Resources = dict[str, int]


def _amount(name: str, quantity: Any) -> int:
    return milli_value(quantity) if name == CPU else integer_value(quantity)


def container_requests(container: Obj) -> Resources:
    """A container's requests; a resource with only a limit requests its limit
    (the API server's defaulting)."""
    resources = container.get("resources") or {}
    wanted = dict(resources.get("limits") or {})
    wanted.update(resources.get("requests") or {})
    return {name: _amount(name, quantity) for name, quantity in wanted.items()}


def _add(total: Resources, more: Mapping[str, int]) -> None:
    for name, amount in more.items():
        total[name] = total.get(name, 0) + amount


def _at_least(total: Resources, floor: Mapping[str, int]) -> None:
    for name, amount in floor.items():
        total[name] = max(total.get(name, 0), amount)


def pod_requests(pod: Obj, *, non_zero: bool = False) -> Resources:
    """What a pod requests, as resourcehelper.PodRequests computes it: the
    containers' sum (with sidecars, the init containers that keep running),
    at least what any plain init container needs while it runs, plus the
    pod overhead. ``non_zero``: a container that names no cpu or memory
    request counts the scoring defaults for it."""

    def requests_of(container: Obj) -> Resources:
        requests = container_requests(container)
        if non_zero:
            requests.setdefault(CPU, DEFAULT_MILLI_CPU)
            requests.setdefault(MEMORY, DEFAULT_MEMORY)
        return requests

    spec = pod.get("spec") or {}
    total: Resources = {}
    for container in spec.get("containers") or []:
        _add(total, requests_of(container))
    sidecars: Resources = {}
    init_peak: Resources = {}
    for container in spec.get("initContainers") or []:
        requests = requests_of(container)
        if container.get("restartPolicy") == "Always":
            _add(sidecars, requests)
            _at_least(init_peak, sidecars)
        else:
            running = dict(sidecars)
            _add(running, requests)
            _at_least(init_peak, running)
    _add(total, sidecars)
    _at_least(total, init_peak)
    _add(total, {n: _amount(n, q) for n, q in (spec.get("overhead") or {}).items()})
    return total


def allocatable(node: Obj) -> Resources:
    status = node.get("status") or {}
    values = status.get("allocatable") or status.get("capacity") or {}
    result = {name: _amount(name, quantity) for name, quantity in values.items()}
    result.setdefault(PODS, 110)
    return result


def sum_requests(pods: Iterable[Obj], *, non_zero: bool = False) -> Resources:
    total: Resources = {}
    for pod in pods:
        _add(total, pod_requests(pod, non_zero=non_zero))
    return total


# ---- NodeResourcesFit: the filter ----


def insufficient(
    wanted: Resources, node_allocatable: Resources, requested: Resources, pod_count: int
) -> list[str]:
    """Why the pod does not fit (fitsRequest): too many pods, then each
    requested resource that the node's allocatable minus what its pods
    request cannot cover."""
    reasons = []
    if pod_count + 1 > node_allocatable.get(PODS, 0):
        reasons.append("Too many pods")
    for name in sorted(wanted, key=lambda n: (n not in (CPU, MEMORY, EPHEMERAL_STORAGE), n)):
        amount = wanted[name]
        if name == PODS or amount <= 0:
            continue
        if amount > node_allocatable.get(name, 0) - requested.get(name, 0):
            reasons.append(f"Insufficient {name}")
    return reasons


# ---- the scores ----


def least_allocated(requested: Resources, node_allocatable: Resources) -> int:
    """The mean over cpu and memory of (allocatable - requested) * 100 / allocatable,
    in integers as kube-scheduler computes it; ``requested`` includes the pod."""
    score = weights = 0
    for name in SCORED:
        capacity = node_allocatable.get(name, 0)
        if capacity == 0:
            continue
        want = requested.get(name, 0)
        score += 0 if want > capacity else (capacity - want) * MAX_NODE_SCORE // capacity
        weights += 1
    return score // weights if weights else 0


def balanced_allocation(requested: Resources, node_allocatable: Resources) -> int:
    """(1 - the standard deviation of the requested fractions) * 100."""
    fractions = []
    for name in SCORED:
        capacity = node_allocatable.get(name, 0)
        if capacity == 0:
            continue
        fractions.append(min(requested.get(name, 0) / capacity, 1.0))
    std = 0.0
    if len(fractions) == 2:
        std = abs((fractions[0] - fractions[1]) / 2)
    elif len(fractions) > 2:
        mean = sum(fractions) / len(fractions)
        std = math.sqrt(sum((f - mean) ** 2 for f in fractions) / len(fractions))
    return int((1 - std) * MAX_NODE_SCORE)

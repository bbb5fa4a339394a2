"""The scheduler's algorithm, pure: filter the nodes, score the feasible ones, pick one.

The filters and scores are kube-scheduler's default plugins, with their order,
failure reasons, normalisation to 0-100 and default weights (the README maps
them to the older predicate and priority names):

- filters, in order: NodeUnschedulable, TaintToleration (NoSchedule and
  NoExecute taints), NodeAffinity (nodeSelector and required node affinity),
  NodeResourcesFit, VolumeRestrictions (NoDiskConflict), InterPodAffinity;
- scores (weight): TaintToleration (3, PreferNoSchedule taints), NodeAffinity
  (2, preferred terms), NodeResourcesFit (1, least allocated), InterPodAffinity
  (2, preferred terms), NodeResourcesBalancedAllocation (1).

A node fails at the first filter that rejects it, with that filter's
reasons; an unschedulable pod gets kube-scheduler's message, e.g. ``0/3
nodes are available: 1 Insufficient cpu, 2 node(s) didn't match Pod's node
affinity/selector.`` A score step that has nothing to judge for this pod is
skipped (as a PreScore ``Skip``); ties are broken at random.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from controllers.objects import Obj, labels_of, name_of, pod_is_active
from controllers.scheduling import nodeaffinity, resources, taints, volumes
from controllers.scheduling.interpod import InterPodAffinity, PlacedPod
from controllers.scheduling.resources import MAX_NODE_SCORE, Resources, pod_requests

__all__ = [
    "WEIGHTS",
    "Decision",
    "NodeInfo",
    "Resources",
    "fit_error",
    "pod_requests",
    "schedule",
    "snapshot",
]

UNSCHEDULABLE_TAINT = {"key": "node.kubernetes.io/unschedulable", "effect": taints.NO_SCHEDULE}
UNSCHEDULABLE_REASON = "node(s) were unschedulable"
TAINT_REASON = "node(s) had untolerated taint(s)"
NODE_AFFINITY_REASON = "node(s) didn't match Pod's node affinity/selector"

WEIGHTS = {
    "TaintToleration": 3,
    "NodeAffinity": 2,
    "NodeResourcesFit": 1,
    "InterPodAffinity": 2,
    "NodeResourcesBalancedAllocation": 1,
}


@dataclass
class NodeInfo:
    """A node and the pods bound (or assumed) to it, with what they request."""

    node: Obj
    pods: list[Obj] = field(default_factory=list)
    requested: Resources = field(default_factory=dict)
    non_zero_requested: Resources = field(default_factory=dict)

    @property
    def name(self) -> str:
        return name_of(self.node)

    @property
    def labels(self) -> dict[str, str]:
        return labels_of(self.node)

    def add(self, pod: Obj) -> None:
        self.pods.append(pod)
        for total, non_zero in ((self.requested, False), (self.non_zero_requested, True)):
            for name, amount in pod_requests(pod, non_zero=non_zero).items():
                total[name] = total.get(name, 0) + amount


def snapshot(nodes: Iterable[Obj], pods: Iterable[Obj]) -> list[NodeInfo]:
    """NodeInfos for ``nodes`` with the active pods bound to them."""
    infos = {name_of(node): NodeInfo(node) for node in nodes}
    for pod in pods:
        node = (pod.get("spec") or {}).get("nodeName")
        if node in infos and pod_is_active(pod):
            infos[node].add(pod)
    return [infos[name] for name in sorted(infos)]


@dataclass
class Decision:
    node: str | None
    scores: dict[str, int]  # feasible node -> weighted total
    reasons: dict[str, list[str]]  # infeasible node -> why
    plugin_scores: dict[str, dict[str, int]] = field(default_factory=dict)  # normalised

    @property
    def message(self) -> str:
        return fit_error(len(self.scores) + len(self.reasons), self.reasons)


def fit_error(node_count: int, reasons: dict[str, list[str]]) -> str:
    """kube-scheduler's FitError text: a histogram of the reasons, sorted as strings."""
    histogram = Counter(reason for node_reasons in reasons.values() for reason in node_reasons)
    parts = sorted(f"{count} {reason}" for reason, count in histogram.items())
    return f"0/{node_count} nodes are available: {', '.join(parts)}."


class _Cycle:
    """One scheduling attempt of one pod: the per-pod state of every plugin."""

    def __init__(self, pod: Obj, nodes: list[NodeInfo]) -> None:
        self.pod = pod
        self.wanted = pod_requests(pod)
        self.wanted_non_zero = pod_requests(pod, non_zero=True)
        self.interpod = InterPodAffinity(
            pod, [PlacedPod(p, info.labels) for info in nodes for p in info.pods]
        )

    def filter(self, info: NodeInfo) -> list[str]:
        pod, node = self.pod, info.node
        if (node.get("spec") or {}).get("unschedulable") and not taints.tolerated(
            taints.tolerations_of(pod), UNSCHEDULABLE_TAINT
        ):
            return [UNSCHEDULABLE_REASON]
        if taints.untolerated(pod, node, (taints.NO_SCHEDULE, taints.NO_EXECUTE)) is not None:
            return [TAINT_REASON]
        if not nodeaffinity.required_matches(pod, node):
            return [NODE_AFFINITY_REASON]
        allocatable = resources.allocatable(node)
        lacking = resources.insufficient(self.wanted, allocatable, info.requested, len(info.pods))
        if lacking:
            return lacking
        if volumes.disk_conflict(pod, info.pods):
            return [volumes.REASON]
        return self.interpod.filter(info.labels)

    def scorers(self) -> dict[str, tuple[Callable[[NodeInfo], int], _Normalize]]:
        """The score steps that apply to this pod (the others are skipped)."""
        pod = self.pod
        steps: dict[str, tuple[Callable[[NodeInfo], int], _Normalize]] = {
            "TaintToleration": (
                lambda info: taints.intolerable_prefer_no_schedule(pod, info.node),
                _reverse_normalize,
            )
        }
        preferred = nodeaffinity.preferred_terms(pod)
        if preferred:
            steps["NodeAffinity"] = (
                lambda info: nodeaffinity.preferred_score(preferred, info.node),
                _normalize,
            )
        steps["NodeResourcesFit"] = (
            lambda info: resources.least_allocated(
                _plus(info.non_zero_requested, self.wanted_non_zero),
                resources.allocatable(info.node),
            ),
            _as_is,
        )
        if self.interpod.prescore():
            steps["InterPodAffinity"] = (
                lambda info: self.interpod.score(info.labels),
                self.interpod.normalize,
            )
        if any(self.wanted.get(name, 0) for name in resources.SCORED):  # not best-effort
            steps["NodeResourcesBalancedAllocation"] = (
                lambda info: resources.balanced_allocation(
                    _plus(info.requested, self.wanted), resources.allocatable(info.node)
                ),
                _as_is,
            )
        return steps


_Normalize = Callable[[dict[str, int]], dict[str, int]]


def _plus(a: Resources, b: Resources) -> Resources:
    total = dict(a)
    for name, amount in b.items():
        total[name] = total.get(name, 0) + amount
    return total


def _as_is(scores: dict[str, int]) -> dict[str, int]:
    return scores


def _normalize(scores: dict[str, int], *, reverse: bool = False) -> dict[str, int]:
    """helper.DefaultNormalizeScore: scale so the highest is 100 (reversed: 100 - that)."""
    highest = max(scores.values(), default=0)
    if highest == 0:
        return dict.fromkeys(scores, MAX_NODE_SCORE if reverse else 0)
    scaled = {n: MAX_NODE_SCORE * s // highest for n, s in scores.items()}
    return {n: MAX_NODE_SCORE - s for n, s in scaled.items()} if reverse else scaled


def _reverse_normalize(scores: dict[str, int]) -> dict[str, int]:
    return _normalize(scores, reverse=True)


def schedule(pod: Obj, nodes: list[NodeInfo], rng: random.Random | None = None) -> Decision:
    """Pick the best feasible node for ``pod`` (ties broken at random), or None with why."""
    cycle = _Cycle(pod, nodes)
    feasible: list[NodeInfo] = []
    reasons: dict[str, list[str]] = {}
    for info in nodes:
        rejected = cycle.filter(info)
        if rejected:
            reasons[info.name] = rejected
        else:
            feasible.append(info)
    if not feasible:
        return Decision(None, {}, reasons)
    totals = dict.fromkeys((info.name for info in feasible), 0)
    plugin_scores: dict[str, dict[str, int]] = {}
    for plugin, (score, normalize) in cycle.scorers().items():
        normalized = normalize({info.name: score(info) for info in feasible})
        plugin_scores[plugin] = normalized
        for name, value in normalized.items():
            totals[name] += WEIGHTS[plugin] * value
    best = max(totals.values())
    top = sorted(name for name, total in totals.items() if total == best)
    return Decision((rng or random).choice(top), totals, reasons, plugin_scores)

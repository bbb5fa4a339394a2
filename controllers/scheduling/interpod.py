"""Inter-pod affinity and anti-affinity (kube-scheduler's InterPodAffinity plugin).

A PodAffinityTerm selects pods by ``labelSelector`` in some namespaces (its
``namespaces``, those its ``namespaceSelector`` picks, or by default the
namespace of the pod that has the term) and names a ``topologyKey``: two
nodes are in the same domain when they have the same value of that label.

Filter, for the incoming pod and a candidate node:

- required affinity: for every term the node has the topology label, and some
  existing pod matching *all* the terms runs in the node's domain of that term;
  if no pod anywhere matches them and the pod matches its own terms (the first
  of a group that wants to be together), any node with the labels passes;
- required anti-affinity: no existing pod matching a term runs in the node's
  domain of that term;
- existing pods' required anti-affinity: no pod whose term matches the
  incoming pod runs in the node's domain of that term.

Score: per topology domain, the sum of the weights of the incoming pod's
preferred terms matched by existing pods there (anti-affinity subtracts), of
the existing pods' preferred terms that the incoming pod matches, and 1 (the
hard pod affinity weight) per existing pod's required affinity term it
matches; normalised to 0-100 between the lowest and highest node.

Namespaces have no objects here: each is taken to carry only the label
``kubernetes.io/metadata.name: <name>`` that Kubernetes gives every namespace,
which is what a ``namespaceSelector`` can match.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

from controllers.objects import (
    Obj,
    SelectorError,
    label_selector_matches,
    labels_of,
    namespace_of,
)

AFFINITY_REASON = "node(s) didn't match pod affinity rules"
ANTI_AFFINITY_REASON = "node(s) didn't match pod anti-affinity rules"
EXISTING_ANTI_AFFINITY_REASON = "node(s) didn't satisfy existing pods anti-affinity rules"
HARD_POD_AFFINITY_WEIGHT = 1  # kube-scheduler's default hardPodAffinityWeight
MAX_NODE_SCORE = 100


def namespace_labels(namespace: str) -> dict[str, str]:
    return {"kubernetes.io/metadata.name": namespace}


@dataclass(frozen=True)
class AffinityTerm:
    namespaces: frozenset[str]
    namespace_selector: dict[str, Any] | None  # None selects no namespace
    selector: dict[str, Any] | None  # None selects no pod
    topology_key: str

    def matches(self, pod: Obj) -> bool:
        namespace = namespace_of(pod)
        try:
            in_scope = namespace in self.namespaces or label_selector_matches(
                self.namespace_selector, namespace_labels(namespace)
            )
            return in_scope and label_selector_matches(self.selector, labels_of(pod))
        except SelectorError:
            return False


def _term(owner: Obj, raw: dict[str, Any]) -> AffinityTerm:
    namespaces = frozenset(raw.get("namespaces") or [])
    namespace_selector = raw.get("namespaceSelector")
    if not namespaces and namespace_selector is None:
        namespaces = frozenset({namespace_of(owner)})
    selector = raw.get("labelSelector")
    owner_labels = labels_of(owner)
    # matchLabelKeys/mismatchLabelKeys: the API server merges the owner's values
    # for these keys into the selector when the pod is created; done here instead.
    extra = [
        {"key": key, "operator": operator, "values": [owner_labels[key]]}
        for field, operator in (("matchLabelKeys", "In"), ("mismatchLabelKeys", "NotIn"))
        for key in raw.get(field) or []
        if key in owner_labels
    ]
    if selector is not None and extra:
        selector = dict(selector)
        selector["matchExpressions"] = [*(selector.get("matchExpressions") or []), *extra]
    return AffinityTerm(namespaces, namespace_selector, selector, raw.get("topologyKey", ""))


def _section(pod: Obj, kind: str) -> dict[str, Any]:
    return ((pod.get("spec") or {}).get("affinity") or {}).get(kind) or {}


def required_terms(pod: Obj, kind: str) -> list[AffinityTerm]:
    """``kind``: podAffinity or podAntiAffinity."""
    raw = _section(pod, kind).get("requiredDuringSchedulingIgnoredDuringExecution") or []
    return [_term(pod, term) for term in raw]


def preferred_terms(pod: Obj, kind: str) -> list[tuple[int, AffinityTerm]]:
    raw = _section(pod, kind).get("preferredDuringSchedulingIgnoredDuringExecution") or []
    return [(int(t.get("weight") or 0), _term(pod, t.get("podAffinityTerm") or {})) for t in raw]


def _matches_all(terms: list[AffinityTerm], pod: Obj) -> bool:
    return bool(terms) and all(term.matches(pod) for term in terms)


@dataclass
class PlacedPod:
    """An existing (bound or assumed) pod and the labels of its node."""

    pod: Obj
    node_labels: dict[str, str]


class InterPodAffinity:
    def __init__(self, pod: Obj, placed: list[PlacedPod]) -> None:
        self.pod = pod
        self.placed = placed
        self.affinity = required_terms(pod, "podAffinity")
        self.anti_affinity = required_terms(pod, "podAntiAffinity")
        self.affinity_counts: Counter[tuple[str, str]] = Counter()
        self.anti_affinity_counts: Counter[tuple[str, str]] = Counter()
        self.existing_anti_counts: Counter[tuple[str, str]] = Counter()
        for other in placed:
            labels = other.node_labels
            if _matches_all(self.affinity, other.pod):
                for term in self.affinity:
                    if term.topology_key in labels:
                        self.affinity_counts[(term.topology_key, labels[term.topology_key])] += 1
            for term in self.anti_affinity:
                if term.matches(other.pod) and term.topology_key in labels:
                    self.anti_affinity_counts[(term.topology_key, labels[term.topology_key])] += 1
            for term in required_terms(other.pod, "podAntiAffinity"):
                if term.matches(pod) and term.topology_key in labels:
                    self.existing_anti_counts[(term.topology_key, labels[term.topology_key])] += 1
        self.topology_score: dict[str, dict[str, int]] = {}

    # ---- filter ----

    def filter(self, node_labels: dict[str, str]) -> list[str]:
        if not self._satisfies_affinity(node_labels):
            return [AFFINITY_REASON]
        for term in self.anti_affinity:
            value = node_labels.get(term.topology_key)
            if value is not None and self.anti_affinity_counts[(term.topology_key, value)] > 0:
                return [ANTI_AFFINITY_REASON]
        if any(self.existing_anti_counts[pair] > 0 for pair in node_labels.items()):
            return [EXISTING_ANTI_AFFINITY_REASON]
        return []

    def _satisfies_affinity(self, node_labels: dict[str, str]) -> bool:
        pods_exist = True
        for term in self.affinity:
            value = node_labels.get(term.topology_key)
            if value is None:
                return False  # every topology label must be on the node
            if self.affinity_counts[(term.topology_key, value)] <= 0:
                pods_exist = False
        if pods_exist:
            return True
        # The first pod of a group with affinity to itself: nothing matches yet.
        return not self.affinity_counts and _matches_all(self.affinity, self.pod)

    # ---- score ----

    def prescore(self) -> bool:
        """Build the per-domain scores; False if there is nothing to score (skip)."""
        preferred = preferred_terms(self.pod, "podAffinity")
        preferred_anti = preferred_terms(self.pod, "podAntiAffinity")
        entries = False

        def add(term: AffinityTerm, weight: int, target: Obj, labels: dict[str, str]) -> None:
            nonlocal entries
            if term.matches(target) and term.topology_key in labels:
                domain = self.topology_score.setdefault(term.topology_key, {})
                value = labels[term.topology_key]
                domain[value] = domain.get(value, 0) + weight
                entries = True

        for other in self.placed:
            labels = other.node_labels
            if not labels:
                continue
            for weight, term in preferred:
                add(term, weight, other.pod, labels)
            for weight, term in preferred_anti:
                add(term, -weight, other.pod, labels)
            for term in required_terms(other.pod, "podAffinity"):
                add(term, HARD_POD_AFFINITY_WEIGHT, self.pod, labels)
            for weight, term in preferred_terms(other.pod, "podAffinity"):
                add(term, weight, self.pod, labels)
            for weight, term in preferred_terms(other.pod, "podAntiAffinity"):
                add(term, -weight, self.pod, labels)
        return entries

    def score(self, node_labels: dict[str, str]) -> int:
        return sum(
            values.get(node_labels[key], 0)
            for key, values in self.topology_score.items()
            if key in node_labels
        )

    @staticmethod
    def normalize(scores: dict[str, int]) -> dict[str, int]:
        if not scores:
            return scores
        low, high = min(scores.values()), max(scores.values())
        if high == low:
            return dict.fromkeys(scores, 0)
        return {n: int(MAX_NODE_SCORE * ((s - low) / (high - low))) for n, s in scores.items()}

"""Taints and tolerations (core/v1 semantics), shared by the scheduler's
TaintToleration plugin and the taint-eviction controller."""

from __future__ import annotations

from typing import Any

from controllers.objects import Obj

NO_SCHEDULE, PREFER_NO_SCHEDULE, NO_EXECUTE = "NoSchedule", "PreferNoSchedule", "NoExecute"

Taint = dict[str, Any]
Toleration = dict[str, Any]


def tolerations_of(pod: Obj) -> list[Toleration]:
    return list((pod.get("spec") or {}).get("tolerations") or [])


def taints_of(node: Obj) -> list[Taint]:
    return list((node.get("spec") or {}).get("taints") or [])


def tolerates(toleration: Toleration, taint: Taint) -> bool:
    """Toleration.ToleratesTaint: an empty effect or key matches any; ``Exists``
    ignores the value, ``Equal`` (the default) compares it."""
    effect = toleration.get("effect") or ""
    if effect and effect != taint.get("effect"):
        return False
    key = toleration.get("key") or ""
    if key and key != taint.get("key"):
        return False
    operator = toleration.get("operator") or "Equal"
    if operator == "Exists":
        return True
    if operator == "Equal":
        return (toleration.get("value") or "") == (taint.get("value") or "")
    return False


def tolerated(tolerations: list[Toleration], taint: Taint) -> bool:
    return any(tolerates(t, taint) for t in tolerations)


def untolerated(pod: Obj, node: Obj, effects: tuple[str, ...]) -> Taint | None:
    """The first of the node's taints with one of ``effects`` that the pod does not tolerate."""
    tolerations = tolerations_of(pod)
    for taint in taints_of(node):
        if taint.get("effect") in effects and not tolerated(tolerations, taint):
            return taint
    return None


def intolerable_prefer_no_schedule(pod: Obj, node: Obj) -> int:
    """How many PreferNoSchedule taints the pod does not tolerate (only its
    tolerations with that effect, or none, count)."""
    tolerations = [
        t for t in tolerations_of(pod) if (t.get("effect") or "") in ("", PREFER_NO_SCHEDULE)
    ]
    return sum(
        1
        for taint in taints_of(node)
        if taint.get("effect") == PREFER_NO_SCHEDULE and not tolerated(tolerations, taint)
    )

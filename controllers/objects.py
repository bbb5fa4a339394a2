"""Kubernetes-like objects as JSON dicts, and the small vocabulary around them.

Objects are plain ``dict`` values shaped like Kubernetes' (``apiVersion``,
``kind``, ``metadata``, ``spec``, ``status``); the helpers here read and build
the few fields the controllers use. ``metadata.resourceVersion`` is never
stored: it is filled in on read from the key's mod_revision, and every write
compares it (optimistic concurrency).

Key layout (``prefix`` is ``/registry`` unless ``--etcd-prefix`` says otherwise)::

    <prefix>/pods/<namespace>/<name>
    <prefix>/replicasets/<namespace>/<name>
    <prefix>/deployments/<namespace>/<name>
    <prefix>/nodes/<name>                      (cluster-scoped)
    <prefix>/leases/kube-node-lease/<node>     (node heartbeats)
"""

from __future__ import annotations

import copy
import math
import re
import uuid
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

Obj = dict[str, Any]

NODE_LEASE_NAMESPACE = "kube-node-lease"
CLUSTER_SCOPED = frozenset({"nodes"})

KINDS = {
    "pods": ("v1", "Pod"),
    "nodes": ("v1", "Node"),
    "replicasets": ("apps/v1", "ReplicaSet"),
    "deployments": ("apps/v1", "Deployment"),
    "leases": ("coordination.k8s.io/v1", "Lease"),
}


def now_rfc3339() -> str:
    """Wall-clock time for people to read; no decision is ever based on it."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def new_object(
    resource: str,
    name: str,
    namespace: str = "",
    *,
    labels: dict[str, str] | None = None,
    spec: dict[str, Any] | None = None,
    status: dict[str, Any] | None = None,
) -> Obj:
    api_version, kind = KINDS[resource]
    metadata: dict[str, Any] = {"name": name}
    if resource not in CLUSTER_SCOPED:
        metadata["namespace"] = namespace or "default"
    if labels:
        metadata["labels"] = dict(labels)
    obj: Obj = {"apiVersion": api_version, "kind": kind, "metadata": metadata}
    obj["spec"] = spec or {}
    if status is not None:
        obj["status"] = status
    return obj


def meta(obj: Obj) -> dict[str, Any]:
    return obj.setdefault("metadata", {})  # type: ignore[no-any-return]


def name_of(obj: Obj) -> str:
    return str(obj["metadata"]["name"])


def namespace_of(obj: Obj) -> str:
    return str(obj["metadata"].get("namespace", ""))


def object_key(obj: Obj) -> str:
    """The work-queue key: ``<namespace>/<name>``, or ``<name>`` if cluster-scoped."""
    namespace = namespace_of(obj)
    return f"{namespace}/{name_of(obj)}" if namespace else name_of(obj)


def resource_version(obj: Obj) -> int:
    return int(obj["metadata"].get("resourceVersion", 0))


def uid_of(obj: Obj) -> str:
    return str(obj["metadata"].get("uid", ""))


def labels_of(obj: Obj) -> dict[str, str]:
    return dict(obj["metadata"].get("labels") or {})


def annotations_of(obj: Obj) -> dict[str, str]:
    return dict(obj["metadata"].get("annotations") or {})


def generation_of(obj: Obj) -> int:
    return int(obj["metadata"].get("generation") or 0)


def bump_generation(old: Obj, new: Obj) -> None:
    """What kube-apiserver does on an update: a changed ``spec`` increments
    ``metadata.generation`` (controllers report the one they acted on as
    ``status.observedGeneration``)."""
    if old.get("spec") != new.get("spec"):
        meta(new)["generation"] = generation_of(old) + 1


def with_spec_change(obj: Obj, change: Any) -> Obj:
    """A copy of ``obj`` after ``change(copy)``, its generation bumped if the spec changed."""
    updated = copy.deepcopy(obj)
    change(updated)
    bump_generation(obj, updated)
    return updated


def new_uid() -> str:
    return str(uuid.uuid4())


# ---- owner references ----


def controller_ref(obj: Obj) -> dict[str, Any] | None:
    for ref in obj["metadata"].get("ownerReferences") or []:
        if ref.get("controller"):
            return dict(ref)
    return None


def owner_reference(owner: Obj) -> dict[str, Any]:
    return {
        "apiVersion": owner["apiVersion"],
        "kind": owner["kind"],
        "name": name_of(owner),
        "uid": uid_of(owner),
        "controller": True,
        "blockOwnerDeletion": True,
    }


# ---- label selectors (matchLabels and matchExpressions) ----


class SelectorError(ValueError):
    """A selector that Kubernetes' validation would reject (unknown operator, bad values)."""


def requirement_matches(key: str, operator: str, values: list[str], labels: dict[str, str]) -> bool:
    """One requirement of a label selector or node selector term (apimachinery's
    labels.Requirement): ``Gt``/``Lt`` compare the label as an integer."""
    if operator in ("In", "NotIn") and not values:
        raise SelectorError(f"{key}: {operator} needs at least one value")
    if operator in ("Exists", "DoesNotExist") and values:
        raise SelectorError(f"{key}: {operator} takes no values")
    if operator == "In":
        return key in labels and labels[key] in values
    if operator == "NotIn":
        return key not in labels or labels[key] not in values
    if operator == "Exists":
        return key in labels
    if operator == "DoesNotExist":
        return key not in labels
    if operator in ("Gt", "Lt"):
        if len(values) != 1 or not _INTEGER.match(values[0]):
            raise SelectorError(f"{key}: {operator} needs exactly one integer value")
        if key not in labels or not _INTEGER.match(labels[key]):
            return False
        have, bound = int(labels[key]), int(values[0])
        return have > bound if operator == "Gt" else have < bound
    raise SelectorError(f"{key}: unknown operator {operator!r}")


_INTEGER = re.compile(r"^[+-]?[0-9]+$")


def label_selector_matches(selector: dict[str, Any] | None, labels: dict[str, str]) -> bool:
    """A metav1.LabelSelector as LabelSelectorAsSelector reads it: a missing
    (None) selector matches nothing, an empty one ``{}`` matches everything."""
    if selector is None:
        return False
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expression in selector.get("matchExpressions") or []:
        operator = expression.get("operator", "")
        if operator not in ("In", "NotIn", "Exists", "DoesNotExist"):
            raise SelectorError(f"{expression.get('key')}: unknown operator {operator!r}")
        values = list(expression.get("values") or [])
        if not requirement_matches(expression["key"], operator, values, labels):
            return False
    return True


def selector_matches(selector: dict[str, Any] | None, labels: dict[str, str]) -> bool:
    """A controller's selector (ReplicaSet, Deployment): empty selects nothing."""
    if not selector or not (selector.get("matchLabels") or selector.get("matchExpressions")):
        return False
    try:
        return label_selector_matches(selector, labels)
    except SelectorError:
        return False


# ---- node conditions ----


def condition(obj: Obj, kind: str) -> dict[str, Any] | None:
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond.get("type") == kind:
            return dict(cond)
    return None


def set_condition(obj: Obj, kind: str, status: str, reason: str, message: str = "") -> bool:
    """Set a condition; True if its status changed."""
    conditions = obj.setdefault("status", {}).setdefault("conditions", [])
    stamp = now_rfc3339()
    for cond in conditions:
        if cond.get("type") == kind:
            changed = cond.get("status") != status
            cond.update(status=status, reason=reason, message=message, lastHeartbeatTime=stamp)
            if changed:
                cond["lastTransitionTime"] = stamp
            return bool(changed)
    conditions.append(
        {
            "type": kind,
            "status": status,
            "reason": reason,
            "message": message,
            "lastHeartbeatTime": stamp,
            "lastTransitionTime": stamp,
        }
    )
    return True


def node_ready(node: Obj) -> bool:
    cond = condition(node, "Ready")
    return cond is not None and cond.get("status") == "True"


def pod_is_active(pod: Obj) -> bool:
    """Counts towards a ReplicaSet: not terminating, not finished."""
    if pod["metadata"].get("deletionTimestamp"):
        return False
    return (pod.get("status") or {}).get("phase") not in ("Succeeded", "Failed")


# ---- quantities ----

_SUFFIXES = {
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
    "": Decimal(1),
    "k": Decimal(10) ** 3,
    "M": Decimal(10) ** 6,
    "G": Decimal(10) ** 9,
    "T": Decimal(10) ** 12,
    "P": Decimal(10) ** 15,
    "E": Decimal(10) ** 18,
    "Ki": Decimal(2) ** 10,
    "Mi": Decimal(2) ** 20,
    "Gi": Decimal(2) ** 30,
    "Ti": Decimal(2) ** 40,
    "Pi": Decimal(2) ** 50,
    "Ei": Decimal(2) ** 60,
}
_QUANTITY = re.compile(
    r"^([+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))(?:([eE][+-]?[0-9]+)|(Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE])?)$"
)


def parse_quantity(text: str | int | float) -> Decimal:
    """A Kubernetes resource quantity ("500m", "2", "128Mi", "1G", "1e3"), exactly."""
    if isinstance(text, int | float):
        return Decimal(str(text))
    match = _QUANTITY.match(text.strip())
    if not match:
        raise ValueError(f"invalid quantity {text!r}")
    number, exponent, suffix = match.groups()
    try:
        value = Decimal(number)
        if exponent:
            return value * Decimal(10) ** int(exponent[1:])
    except InvalidOperation:
        raise ValueError(f"invalid quantity {text!r}") from None
    return value * _SUFFIXES[suffix or ""]


def milli_value(text: str | int | float) -> int:
    """As Quantity.MilliValue(): thousandths, rounded up."""
    return math.ceil(parse_quantity(text) * 1000)


def integer_value(text: str | int | float) -> int:
    """As Quantity.Value(): rounded up to an integer."""
    return math.ceil(parse_quantity(text))


def milli_cpu(text: str | int | float) -> int:
    return milli_value(text)


def memory_bytes(text: str | int | float) -> int:
    return integer_value(text)

"""Kubernetes-like objects as JSON dicts, and the small vocabulary around them.

Objects are plain ``dict`` values shaped like Kubernetes' (``apiVersion``,
``kind``, ``metadata``, ``spec``, ``status``); the helpers here read and build
the few fields the controllers use. ``metadata.resourceVersion`` is never
stored: it is filled in on read from the key's mod_revision, and every write
compares it (optimistic concurrency).

Key layout (``prefix`` is ``/registry`` unless ``--etcd-prefix`` says otherwise)::

    <prefix>/pods/<namespace>/<name>
    <prefix>/replicasets/<namespace>/<name>
    <prefix>/nodes/<name>                      (cluster-scoped)
    <prefix>/leases/kube-node-lease/<node>     (node heartbeats)
"""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime
from typing import Any

Obj = dict[str, Any]

NODE_LEASE_NAMESPACE = "kube-node-lease"
CLUSTER_SCOPED = frozenset({"nodes"})

KINDS = {
    "pods": ("v1", "Pod"),
    "nodes": ("v1", "Node"),
    "replicasets": ("apps/v1", "ReplicaSet"),
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


def selector_matches(selector: dict[str, Any] | None, labels: dict[str, str]) -> bool:
    """A LabelSelector; an empty or missing selector matches nothing (as for ReplicaSets)."""
    if not selector:
        return False
    match_labels = selector.get("matchLabels") or {}
    expressions = selector.get("matchExpressions") or []
    if not match_labels and not expressions:
        return False
    for key, value in match_labels.items():
        if labels.get(key) != value:
            return False
    for expression in expressions:
        key, operator = expression["key"], expression["operator"]
        values = expression.get("values") or []
        if operator == "In" and labels.get(key) not in values:
            return False
        if operator == "NotIn" and key in labels and labels[key] in values:
            return False
        if operator == "Exists" and key not in labels:
            return False
        if operator == "DoesNotExist" and key in labels:
            return False
    return True


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


# ---- quantities and durations ----

_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL = {"k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18}
_QUANTITY = re.compile(r"^([0-9]+(?:\.[0-9]*)?|\.[0-9]+)(m|Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$")


def parse_quantity(text: str | int | float) -> float:
    """A Kubernetes resource quantity ("500m", "2", "128Mi", "1G") as a plain number."""
    if isinstance(text, int | float):
        return float(text)
    match = _QUANTITY.match(text.strip())
    if not match:
        raise ValueError(f"invalid quantity {text!r}")
    number, suffix = float(match.group(1)), match.group(2)
    if suffix is None:
        return number
    if suffix == "m":
        return number / 1000
    return number * (_BINARY.get(suffix) or _DECIMAL[suffix])


def milli_cpu(text: str | int | float) -> int:
    return round(parse_quantity(text) * 1000)


def memory_bytes(text: str | int | float) -> int:
    return round(parse_quantity(text))

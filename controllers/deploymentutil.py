"""The Deployment controller's arithmetic, pure (Kubernetes' deployment/util).

apps/v1 defaults, ``maxSurge``/``maxUnavailable`` resolution (a percentage
of the replicas, surge rounded up and unavailability down, and never both
zero), the pod-template-hash that names a Deployment's ReplicaSets, the
revision annotations, the proportions of a scale during a rollout, and the
status with its Available and Progressing conditions.
"""

from __future__ import annotations

import copy
import json
import re
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from controllers.objects import Obj, annotations_of, generation_of, meta, now_rfc3339

POD_TEMPLATE_HASH = "pod-template-hash"
REVISION = "deployment.kubernetes.io/revision"
REVISION_HISTORY = "deployment.kubernetes.io/revision-history"
DESIRED_REPLICAS = "deployment.kubernetes.io/desired-replicas"
MAX_REPLICAS = "deployment.kubernetes.io/max-replicas"
ROLLBACK_TO = "deprecated.deployment.rollback.to"
LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"
# Annotations a Deployment does not copy to its ReplicaSets (nor back on a rollback).
NOT_COPIED = frozenset(
    {LAST_APPLIED, REVISION, REVISION_HISTORY, DESIRED_REPLICAS, MAX_REPLICAS, ROLLBACK_TO}
)
MAX_REVISION_HISTORY_CHARS = 2000

ROLLING_UPDATE, RECREATE = "RollingUpdate", "Recreate"
# Progressing/Available condition reasons.
NEW_RS_CREATED = "NewReplicaSetCreated"
FOUND_NEW_RS = "FoundNewReplicaSet"
RS_UPDATED = "ReplicaSetUpdated"
NEW_RS_AVAILABLE = "NewReplicaSetAvailable"
TIMED_OUT = "ProgressDeadlineExceeded"
PAUSED = "DeploymentPaused"
RESUMED = "DeploymentResumed"
MIN_AVAILABLE = "MinimumReplicasAvailable"
MIN_UNAVAILABLE = "MinimumReplicasUnavailable"

_SAFE_CHARS = "bcdfghjklmnpqrstvwxz2456789"


# ---- spec ----


def with_defaults(deployment: Obj) -> Obj:
    """A copy with apps/v1's defaults filled in, as kube-apiserver stores it."""
    d = copy.deepcopy(deployment)
    spec = d.setdefault("spec", {})
    spec.setdefault("replicas", 1)
    spec.setdefault("revisionHistoryLimit", 10)
    spec.setdefault("progressDeadlineSeconds", 600)
    spec.setdefault("minReadySeconds", 0)
    strategy = spec.setdefault("strategy", {})
    strategy.setdefault("type", ROLLING_UPDATE)
    if strategy["type"] == ROLLING_UPDATE:
        rolling = strategy.setdefault("rollingUpdate", {})
        rolling.setdefault("maxSurge", "25%")
        rolling.setdefault("maxUnavailable", "25%")
    return d


def scaled_value(value: int | str, total: int, *, round_up: bool) -> int:
    """intstr.GetScaledValueFromIntOrPercent: an int as is, "N%" of ``total``."""
    if isinstance(value, bool):
        raise ValueError(f"invalid value {value!r}")
    if isinstance(value, int):
        return value
    match = re.fullmatch(r"([0-9]+)%", value)
    if not match:
        raise ValueError(f"invalid value for IntOrString: invalid value {value!r}")
    scaled, remainder = divmod(int(match.group(1)) * total, 100)
    return scaled + (1 if round_up and remainder else 0)


def resolve_fenceposts(surge: int | str, unavailable: int | str, desired: int) -> tuple[int, int]:
    max_surge = scaled_value(surge, desired, round_up=True)
    max_unavailable = scaled_value(unavailable, desired, round_up=False)
    if max_surge == 0 and max_unavailable == 0:
        # Both round to zero (validation rejects them being set so): let one pod go.
        max_unavailable = 1
    return max_surge, max_unavailable


def replicas_of(obj: Obj) -> int:
    return int((obj.get("spec") or {}).get("replicas", 1))


def is_rolling(d: Obj) -> bool:
    return bool(d["spec"]["strategy"]["type"] == ROLLING_UPDATE)


def max_surge(d: Obj) -> int:
    if not is_rolling(d):
        return 0
    rolling = d["spec"]["strategy"]["rollingUpdate"]
    return resolve_fenceposts(rolling["maxSurge"], rolling["maxUnavailable"], replicas_of(d))[0]


def max_unavailable(d: Obj) -> int:
    if not is_rolling(d) or replicas_of(d) == 0:
        return 0
    rolling = d["spec"]["strategy"]["rollingUpdate"]
    unavailable = resolve_fenceposts(
        rolling["maxSurge"], rolling["maxUnavailable"], replicas_of(d)
    )[1]
    return min(unavailable, replicas_of(d))


def validate(d: Obj) -> list[str]:
    """What kube-apiserver's validation of a (defaulted) Deployment would reject."""
    errors = []
    spec = d["spec"]
    selector = spec.get("selector")
    template_labels = ((spec.get("template") or {}).get("metadata") or {}).get("labels") or {}
    if not selector or not (selector.get("matchLabels") or selector.get("matchExpressions")):
        errors.append("spec.selector: Required value")
    elif any(template_labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        errors.append("spec.template.metadata.labels: Invalid value: `selector` does not match")
    if replicas_of(d) < 0:
        errors.append("spec.replicas: must be greater than or equal to 0")
    kind = spec["strategy"]["type"]
    if kind not in (ROLLING_UPDATE, RECREATE):
        errors.append(f"spec.strategy.type: Unsupported value: {kind!r}")
    elif kind == RECREATE and spec["strategy"].get("rollingUpdate"):
        errors.append("spec.strategy.rollingUpdate: may not be specified with Recreate")
    elif kind == ROLLING_UPDATE:
        rolling = spec["strategy"]["rollingUpdate"]
        try:
            surge = scaled_value(rolling["maxSurge"], 100, round_up=True)
            unavailable = scaled_value(rolling["maxUnavailable"], 100, round_up=False)
            if surge == 0 and unavailable == 0:
                errors.append(
                    "spec.strategy.rollingUpdate.maxUnavailable: may not be 0 when maxSurge is 0"
                )
            if isinstance(rolling["maxUnavailable"], str) and unavailable > 100:
                errors.append(
                    "spec.strategy.rollingUpdate.maxUnavailable: must not be greater than 100%"
                )
        except ValueError as error:
            errors.append(f"spec.strategy.rollingUpdate: {error}")
    return errors


# ---- ReplicaSets: hash, templates, revisions ----


def fnv32a(data: bytes) -> int:
    value = 0x811C9DC5
    for byte in data:
        value = ((value ^ byte) * 0x01000193) & 0xFFFFFFFF
    return value


def safe_encode(text: str) -> str:
    """rand.SafeEncodeString: each character onto letters and digits that spell no words."""
    return "".join(_SAFE_CHARS[ord(c) % len(_SAFE_CHARS)] for c in text)


def compute_hash(template: Obj, collision_count: int | None) -> str:
    """The pod-template-hash: FNV-1a (32 bit) of the template, then of the collision
    count if any (8 bytes, little-endian), its decimal digits safely encoded.
    (Kubernetes hashes its Go structs; here the canonical JSON of the template.)"""
    data = json.dumps(template, sort_keys=True, separators=(",", ":")).encode()
    if collision_count is not None:
        data += struct.pack("<Q", collision_count & 0xFFFFFFFF)
    return safe_encode(str(fnv32a(data)))


def _without_hash(template: Obj) -> Obj:
    stripped = copy.deepcopy(template)
    labels = (stripped.get("metadata") or {}).get("labels")
    if labels:
        labels.pop(POD_TEMPLATE_HASH, None)
    return stripped


def equal_ignore_hash(a: Obj, b: Obj) -> bool:
    return _without_hash(a) == _without_hash(b)


def template_of(obj: Obj) -> Obj:
    return (obj.get("spec") or {}).get("template") or {}


def revision(rs: Obj) -> int:
    try:
        return int(annotations_of(rs).get(REVISION, "0"))
    except ValueError:
        return 0


def max_revision(rss: Iterable[Obj]) -> int:
    return max((revision(rs) for rs in rss), default=0)


def last_revision(rss: Iterable[Obj]) -> int:
    """The second highest revision (what ``rollout undo`` returns to)."""
    revisions = sorted({revision(rs) for rs in rss}, reverse=True)
    return revisions[1] if len(revisions) > 1 else 0


def by_creation(rs: Obj) -> tuple[str, str]:
    return (rs["metadata"].get("creationTimestamp", ""), rs["metadata"]["name"])


def find_new(d: Obj, rss: list[Obj]) -> Obj | None:
    """The oldest ReplicaSet whose template is the Deployment's (ignoring the hash)."""
    for rs in sorted(rss, key=by_creation):
        if equal_ignore_hash(template_of(rs), template_of(d)):
            return rs
    return None


def active(rss: Iterable[Obj | None]) -> list[Obj]:
    return [rs for rs in rss if rs is not None and replicas_of(rs) > 0]


def total_replicas(rss: Iterable[Obj | None]) -> int:
    return sum(replicas_of(rs) for rs in rss if rs is not None)


def status_sum(rss: Iterable[Obj | None], field: str) -> int:
    return sum(int((rs.get("status") or {}).get(field, 0)) for rs in rss if rs is not None)


def status_current(rs: Obj) -> bool:
    """Its status was computed for its current spec (observedGeneration caught up)."""
    return int((rs.get("status") or {}).get("observedGeneration", 0)) >= generation_of(rs)


def new_rs_replicas(d: Obj, all_rss: list[Obj], new_rs: Obj) -> int:
    """NewRSNewReplicas: up to replicas + maxSurge pods in all, never past replicas."""
    if not is_rolling(d):
        return replicas_of(d)
    most = replicas_of(d) + max_surge(d)
    current = total_replicas(all_rss)
    if current >= most:
        return replicas_of(new_rs)
    return replicas_of(new_rs) + min(most - current, replicas_of(d) - replicas_of(new_rs))


def set_replicas_annotations(rs: Obj, desired: int, most: int) -> bool:
    annotations = meta(rs).setdefault("annotations", {})
    wanted = {DESIRED_REPLICAS: str(desired), MAX_REPLICAS: str(most)}
    changed = any(annotations.get(k) != v for k, v in wanted.items())
    annotations.update(wanted)
    return changed


def replicas_annotations_need_update(rs: Obj, desired: int, most: int) -> bool:
    annotations = annotations_of(rs)
    return annotations.get(DESIRED_REPLICAS) != str(desired) or annotations.get(
        MAX_REPLICAS
    ) != str(most)


def set_new_rs_annotations(d: Obj, rs: Obj, new_revision: int, *, exists: bool) -> bool:
    """Copy the Deployment's annotations, raise the revision to ``new_revision`` (keeping
    the old ones in revision-history when a rollback reuses a ReplicaSet), and on
    creation record desired and max replicas. True if anything changed."""
    annotations = meta(rs).setdefault("annotations", {})
    changed = False
    for key, value in annotations_of(d).items():
        if key not in NOT_COPIED and annotations.get(key) != value:
            annotations[key] = value
            changed = True
    old = annotations.get(REVISION)
    try:
        old_revision = int(old) if old else 0
    except ValueError:
        return changed
    if old_revision < new_revision:
        annotations[REVISION] = str(new_revision)
        changed = True
        if old:
            history = [h for h in annotations.get(REVISION_HISTORY, "").split(",") if h]
            history.append(old)
            while len(",".join(history)) > MAX_REVISION_HISTORY_CHARS and len(history) > 1:
                history.pop(0)
            annotations[REVISION_HISTORY] = ",".join(history)
    if not exists and set_replicas_annotations(rs, replicas_of(d), replicas_of(d) + max_surge(d)):
        changed = True
    return changed


# ---- proportional scaling ----


def _fraction(rs: Obj, d: Obj) -> int:
    if replicas_of(d) == 0:
        return -replicas_of(rs)
    deployment_replicas = replicas_of(d) + max_surge(d)
    try:
        annotated = int(annotations_of(rs)[MAX_REPLICAS])
    except (KeyError, ValueError):
        annotated = int((d.get("status") or {}).get("replicas", 0))
    if annotated == 0:
        return 0
    size = replicas_of(rs) * deployment_replicas / annotated
    return int(size + 0.5) - replicas_of(rs)  # round half away from zero (sizes are >= 0)


def proportion(rs: Obj, d: Obj, to_add: int, added: int) -> int:
    """GetProportion: this ReplicaSet's share of a scale, bounded by what is left."""
    if replicas_of(rs) == 0 or to_add == 0 or to_add == added:
        return 0
    share, allowed = _fraction(rs, d), to_add - added
    return min(share, allowed) if to_add > 0 else max(share, allowed)


# ---- status ----


def condition_of(status: dict[str, Any], kind: str) -> dict[str, Any] | None:
    for cond in status.get("conditions") or []:
        if cond.get("type") == kind:
            return dict(cond)
    return None


def new_condition(kind: str, status: str, reason: str, message: str) -> dict[str, Any]:
    stamp = now_rfc3339()
    return {
        "type": kind,
        "status": status,
        "lastUpdateTime": stamp,
        "lastTransitionTime": stamp,
        "reason": reason,
        "message": message,
    }


def set_condition(status: dict[str, Any], cond: dict[str, Any]) -> None:
    """SetDeploymentCondition: no change when status and reason are the same; the
    transition time kept when only the reason changes."""
    current = condition_of(status, cond["type"])
    if current is not None and current["status"] == cond["status"]:
        if current.get("reason") == cond["reason"]:
            return
        cond = {**cond, "lastTransitionTime": current.get("lastTransitionTime")}
    remove_condition(status, cond["type"])
    status.setdefault("conditions", []).append(cond)


def remove_condition(status: dict[str, Any], kind: str) -> None:
    status["conditions"] = [c for c in status.get("conditions") or [] if c.get("type") != kind]


def calculate_status(all_rss: Sequence[Obj | None], new_rs: Obj | None, d: Obj) -> dict[str, Any]:
    available = status_sum(all_rss, "availableReplicas")
    status: dict[str, Any] = {
        "observedGeneration": generation_of(d),
        "replicas": status_sum(all_rss, "replicas"),
        "updatedReplicas": status_sum([new_rs], "replicas"),
        "readyReplicas": status_sum(all_rss, "readyReplicas"),
        "availableReplicas": available,
        "unavailableReplicas": max(total_replicas(all_rss) - available, 0),
        "conditions": copy.deepcopy((d.get("status") or {}).get("conditions") or []),
    }
    collisions = (d.get("status") or {}).get("collisionCount")
    if collisions is not None:
        status["collisionCount"] = collisions
    if available >= replicas_of(d) - max_unavailable(d):
        cond = new_condition(
            "Available", "True", MIN_AVAILABLE, "Deployment has minimum availability."
        )
    else:
        cond = new_condition(
            "Available", "False", MIN_UNAVAILABLE, "Deployment does not have minimum availability."
        )
    set_condition(status, cond)
    return status


def complete(d: Obj, status: dict[str, Any]) -> bool:
    """Every replica updated and available, no old pods, the latest spec observed."""
    wanted = replicas_of(d)
    return (
        status.get("updatedReplicas") == wanted
        and status.get("replicas") == wanted
        and status.get("availableReplicas") == wanted
        and int(status.get("observedGeneration", 0)) >= generation_of(d)
    )


def progressing(d: Obj, status: dict[str, Any]) -> bool:
    old = d.get("status") or {}

    def get(s: dict[str, Any], key: str) -> int:
        return int(s.get(key, 0))

    old_old = get(old, "replicas") - get(old, "updatedReplicas")
    new_old = get(status, "replicas") - get(status, "updatedReplicas")
    return (
        get(status, "updatedReplicas") > get(old, "updatedReplicas")
        or new_old < old_old
        or get(status, "readyReplicas") > get(old, "readyReplicas")
        or get(status, "availableReplicas") > get(old, "availableReplicas")
    )


NO_DEADLINE = 2**31 - 1  # progressDeadlineSeconds that means none


@dataclass
class Rollout:
    status: dict[str, Any]
    last_progress: float | None  # when progress was last seen (None: the rollout is over)
    check_again_in: float | None  # when the deadline would pass, if it still might


def rollout_status(
    d: Obj, all_rss: list[Obj], new_rs: Obj | None, now: float, last_progress: float
) -> Rollout:
    """syncRolloutStatus: the status, with the Progressing condition updated from
    whether the rollout is complete, progressing, or stuck past its deadline.
    Times are one controller's own monotonic clock, never a timestamp read back."""
    status = calculate_status(all_rss, new_rs, d)
    deadline = int(d["spec"]["progressDeadlineSeconds"])
    if deadline == NO_DEADLINE:
        remove_condition(status, "Progressing")
        return Rollout(status, None, None)
    current = condition_of(d.get("status") or {}, "Progressing")
    reason = (current or {}).get("reason")
    if status["replicas"] == status["updatedReplicas"] and reason == NEW_RS_AVAILABLE:
        return Rollout(status, None, None)  # a resync of a finished rollout
    subject = (
        f'ReplicaSet "{new_rs["metadata"]["name"]}"'
        if new_rs
        else f'Deployment "{d["metadata"]["name"]}"'
    )
    if complete(d, status):
        message = f"{subject} has successfully progressed."
        set_condition(status, new_condition("Progressing", "True", NEW_RS_AVAILABLE, message))
        return Rollout(status, None, None)
    if progressing(d, status):
        cond = new_condition("Progressing", "True", RS_UPDATED, f"{subject} is progressing.")
        if current is not None and current.get("status") == "True":
            cond["lastTransitionTime"] = current.get("lastTransitionTime")
        remove_condition(status, "Progressing")  # a new lastUpdateTime even with that reason
        set_condition(status, cond)
        return Rollout(status, now, None)
    if current is None or reason in (NEW_RS_AVAILABLE, TIMED_OUT):
        return Rollout(status, last_progress, None)
    if now - last_progress > deadline:
        message = f"{subject} has timed out progressing."
        set_condition(status, new_condition("Progressing", "False", TIMED_OUT, message))
        return Rollout(status, last_progress, None)
    return Rollout(status, last_progress, last_progress + deadline - now + 0.1)

"""NoDiskConflict (kube-scheduler's VolumeRestrictions plugin): two pods on one
node may not mount the same disk unless Kubernetes allows it for that volume type.

- ``gcePersistentDisk``: the same ``pdName`` conflicts unless both mounts are read-only;
- ``awsElasticBlockStore``: the same ``volumeID`` always conflicts;
- ``iscsi``: the same ``iqn`` conflicts unless both mounts are read-only;
- ``rbd``: overlapping ``monitors`` with the same ``pool`` (default ``rbd``) and
  ``image`` conflict unless both mounts are read-only.

Other volume types (``hostPath``, ``emptyDir``, ``configMap``, ...) never
conflict, exactly as in Kubernetes.
"""

from __future__ import annotations

from typing import Any

from controllers.objects import Obj

REASON = "node(s) had no available disk"
CHECKED = ("gcePersistentDisk", "awsElasticBlockStore", "iscsi", "rbd")

Volume = dict[str, Any]


def volumes_of(pod: Obj) -> list[Volume]:
    return list((pod.get("spec") or {}).get("volumes") or [])


def _both_read_only(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return bool(a.get("readOnly")) and bool(b.get("readOnly"))


def conflicts(volume: Volume, existing: Volume) -> bool:
    if "gcePersistentDisk" in volume and "gcePersistentDisk" in existing:
        a, b = volume["gcePersistentDisk"], existing["gcePersistentDisk"]
        if a.get("pdName") == b.get("pdName") and not _both_read_only(a, b):
            return True
    if "awsElasticBlockStore" in volume and "awsElasticBlockStore" in existing:
        a, b = volume["awsElasticBlockStore"], existing["awsElasticBlockStore"]
        if a.get("volumeID") == b.get("volumeID"):
            return True
    if "iscsi" in volume and "iscsi" in existing:
        a, b = volume["iscsi"], existing["iscsi"]
        if a.get("iqn") == b.get("iqn") and not _both_read_only(a, b):
            return True
    if "rbd" in volume and "rbd" in existing:
        a, b = volume["rbd"], existing["rbd"]
        if (
            set(a.get("monitors") or []) & set(b.get("monitors") or [])
            and (a.get("pool") or "rbd") == (b.get("pool") or "rbd")
            and a.get("image") == b.get("image")
            and not _both_read_only(a, b)
        ):
            return True
    return False


def disk_conflict(pod: Obj, pods_on_node: list[Obj]) -> bool:
    checked = [v for v in volumes_of(pod) if any(kind in v for kind in CHECKED)]
    if not checked:
        return False
    return any(
        conflicts(volume, existing)
        for volume in checked
        for other in pods_on_node
        for existing in volumes_of(other)
    )

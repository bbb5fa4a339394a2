"""The taint-eviction controller: pods leave nodes with NoExecute taints they do not tolerate.

As Kubernetes' taint eviction (formerly the node lifecycle controller's taint
manager), for each pod bound to a node with NoExecute taints:

- a taint the pod does not tolerate: the pod is deleted at once;
- every taint tolerated, some toleration with ``tolerationSeconds``: the pod
  is deleted once the smallest of those has passed since this controller
  first saw it on the tainted node (its own monotonic clock: a new leader
  starts again, so a failover can delay an eviction but never hasten it);
- tolerated without a time limit: the pod stays.

A pod that names no toleration for ``node.kubernetes.io/not-ready`` or
``node.kubernetes.io/unreachable`` NoExecute tolerates them for
``default_toleration_seconds``, as kube-apiserver's DefaultTolerationSeconds
admission gives every pod (the node lifecycle controller puts the
unreachable taint on a node that stops renewing its heartbeat).
"""

from __future__ import annotations

import logging
import math

import anyio

from controllers.events import emit
from controllers.informer import Handlers, Informers, wait_synced
from controllers.objects import Obj, object_key, pod_is_active
from controllers.runtime import run_workers
from controllers.scheduling.taints import (
    NO_EXECUTE,
    Taint,
    Toleration,
    taints_of,
    tolerates,
    tolerations_of,
)
from controllers.store import ConflictError, Store, Writer
from controllers.workqueue import ExponentialBackoff, WorkQueue

log = logging.getLogger(__name__)

NOT_READY_TAINT = "node.kubernetes.io/not-ready"
UNREACHABLE_TAINT = "node.kubernetes.io/unreachable"


def effective_tolerations(pod: Obj, default_seconds: float) -> list[Toleration]:
    """The pod's tolerations plus the default ones admission would have added."""
    tolerations = tolerations_of(pod)
    for key in (NOT_READY_TAINT, UNREACHABLE_TAINT):
        taint = {"key": key, "effect": NO_EXECUTE}
        if not any(tolerates(t, taint) for t in tolerations):
            tolerations.append(
                {
                    "key": key,
                    "operator": "Exists",
                    "effect": NO_EXECUTE,
                    "tolerationSeconds": default_seconds,
                }
            )
    return tolerations


def toleration_time(tolerations: list[Toleration], taints: list[Taint]) -> float | None:
    """How long the pod may stay: None if some taint is not tolerated (evict now),
    ``inf`` if forever, else the smallest tolerationSeconds of the tolerations
    used (the first that tolerates each taint); a negative time counts as 0."""
    shortest = math.inf
    for taint in taints:
        used = next((t for t in tolerations if tolerates(t, taint)), None)
        if used is None:
            return None
        seconds = used.get("tolerationSeconds")
        if seconds is not None:
            shortest = min(shortest, max(float(seconds), 0.0))
    return shortest


class TaintEvictionController:
    def __init__(
        self,
        store: Store,
        writer: Writer,
        informers: Informers,
        *,
        default_toleration_seconds: float = 300.0,
        workers: int = 2,
    ) -> None:
        self.store = store
        self.writer = writer
        self.default_toleration_seconds = default_toleration_seconds
        self.workers = workers
        self.nodes = informers.get("nodes")
        self.pods = informers.get("pods")
        self.queue: WorkQueue[str] = WorkQueue(ExponentialBackoff(0.05, 5.0))
        self.tainted_since: dict[str, float] = {}  # pod key -> first seen on a NoExecute node
        self.pods.add_handlers(
            Handlers(
                on_add=self._pod_changed,
                on_update=lambda old, new: self._pod_changed(new),
                on_delete=self._pod_deleted,
            )
        )
        self.nodes.add_handlers(
            Handlers(on_add=self._node_changed, on_update=lambda old, new: self._node_changed(new))
        )

    def _pod_changed(self, pod: Obj) -> None:
        if (pod.get("spec") or {}).get("nodeName"):
            self.queue.add(object_key(pod))

    def _pod_deleted(self, pod: Obj) -> None:
        self.tainted_since.pop(object_key(pod), None)

    def _node_changed(self, node: Obj) -> None:
        name = node["metadata"]["name"]
        for pod in self.pods.list():
            if (pod.get("spec") or {}).get("nodeName") == name:
                self.queue.add(object_key(pod))

    async def run(self) -> None:
        await wait_synced(self.nodes, self.pods)
        emit("controller_synced", controller="taint-eviction-controller")
        await run_workers("taint-eviction", self.queue, self.sync, self.workers)

    async def sync(self, key: str) -> None:
        pod = self.pods.get(key)
        node_name = (pod.get("spec") or {}).get("nodeName") if pod is not None else None
        node = self.nodes.get(node_name) if node_name else None
        taints = [t for t in taints_of(node) if t.get("effect") == NO_EXECUTE] if node else []
        if pod is None or node is None or not taints or not pod_is_active(pod):
            self.tainted_since.pop(key, None)
            return
        now = anyio.current_time()
        since = self.tainted_since.setdefault(key, now)
        allowed = toleration_time(
            effective_tolerations(pod, self.default_toleration_seconds), taints
        )
        if allowed == math.inf:
            return
        if allowed is not None and now < since + allowed:
            self.queue.add_after(key, since + allowed - now)
            return
        try:
            await self.store.delete(self.writer, "pods", pod)
        except ConflictError:
            return  # changed meanwhile: its update event brings it back here
        self.tainted_since.pop(key, None)
        emit("pod_evicted", pod=key, node=node_name, taints=[t.get("key") for t in taints])

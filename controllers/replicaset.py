"""The ReplicaSet controller: keep ``spec.replicas`` active pods matching the selector.

As Kubernetes' (pkg/controller/replicaset), level-driven over informers:

- pods are claimed by the ReplicaSet whose uid is their controller owner
  reference; orphans that match a selector are adopted (an optimistic
  update adding the reference), owned pods that no longer match are released;
- **expectations**: after deciding to create N pods (or delete some), the
  ReplicaSet is not acted on again until the informer has observed those
  creations/deletions. The informer cache lags the store, so without this
  a second sync would count the same shortfall twice;
- creations go in slow-start batches (1, 2, 4, ...), stopping at a failure;
- a new leader starts with empty expectations but only after its informers
  listed the store *after* it acquired the lock; the fencing token was
  written before that list, so every pod a previous leader created is
  counted, and no later write from that leader can be applied;
- ``status``: replicas, fullyLabeledReplicas, readyReplicas (Ready
  condition True), availableReplicas (ready for ``spec.minReadySeconds``,
  timed by this controller's own clock from when it first saw the pod
  ready) and observedGeneration. Pods it has just deleted are no longer
  counted, even before the informer sees them go: a Deployment scales old
  ReplicaSets down by these numbers, and must not count a pod twice.
"""

from __future__ import annotations

import copy
import logging
import random
from dataclasses import dataclass, field

import anyio

from controllers.events import emit
from controllers.informer import Handlers, Informers, wait_synced
from controllers.objects import (
    Obj,
    condition,
    controller_ref,
    generation_of,
    labels_of,
    meta,
    name_of,
    namespace_of,
    new_object,
    object_key,
    owner_reference,
    pod_is_active,
    selector_matches,
    uid_of,
)
from controllers.runtime import run_workers
from controllers.store import ConflictError, Store, Writer
from controllers.workqueue import ExponentialBackoff, WorkQueue
from kvstore.client import EtcdError

log = logging.getLogger(__name__)

BURST_REPLICAS = 500  # most creations/deletions one sync starts (Kubernetes: 500)
EXPECTATIONS_TTL = 300.0  # expectations older than this are ignored (Kubernetes: 5 min)
_NAME_CHARS = "bcdfghjklmnpqrstvwxz2456789"


@dataclass
class _Expected:
    adds: int = 0
    deletes: set[str] = field(default_factory=set)
    since: float = 0.0


class Expectations:
    """Creations/deletions a ReplicaSet waits to observe before acting again."""

    def __init__(self, ttl: float = EXPECTATIONS_TTL) -> None:
        self.ttl = ttl
        self._pending: dict[str, _Expected] = {}

    def satisfied(self, key: str) -> bool:
        expected = self._pending.get(key)
        if expected is None:
            return True
        if expected.adds <= 0 and not expected.deletes:
            return True
        return anyio.current_time() - expected.since > self.ttl

    def expect_creations(self, key: str, count: int) -> None:
        self._pending[key] = _Expected(adds=count, since=anyio.current_time())

    def expect_deletions(self, key: str, pods: set[str]) -> None:
        self._pending[key] = _Expected(deletes=set(pods), since=anyio.current_time())

    def creation_observed(self, key: str) -> None:
        expected = self._pending.get(key)
        if expected is not None:
            expected.adds -= 1

    def deletion_observed(self, key: str, pod_key: str) -> None:
        expected = self._pending.get(key)
        if expected is not None:
            expected.deletes.discard(pod_key)

    def forget(self, key: str) -> None:
        self._pending.pop(key, None)

    def pending_deletions(self, key: str) -> set[str]:
        expected = self._pending.get(key)
        return set(expected.deletes) if expected is not None else set()


def pod_ready(pod: Obj) -> bool:
    ready = condition(pod, "Ready")
    return ready is not None and ready.get("status") == "True"


def _deletion_rank(pod: Obj) -> tuple[int, int, int, int]:
    """Pods to delete first sort first: unscheduled, then pending, not ready, newest."""
    scheduled = 1 if (pod.get("spec") or {}).get("nodeName") else 0
    running = 1 if (pod.get("status") or {}).get("phase") == "Running" else 0
    ready = 1 if pod_ready(pod) else 0
    return (scheduled, running, ready, -int(pod["metadata"].get("resourceVersion", 0)))


class ReplicaSetController:
    def __init__(
        self,
        store: Store,
        writer: Writer,
        informers: Informers,
        *,
        workers: int = 5,
    ) -> None:
        self.store = store
        self.writer = writer
        self.workers = workers
        self.replicasets = informers.get("replicasets")
        self.pods = informers.get("pods")
        self.queue: WorkQueue[str] = WorkQueue(ExponentialBackoff(0.005, 10.0))
        self.expectations = Expectations()
        self.ready_since: dict[str, float] = {}  # pod key -> first seen ready (monotonic)
        self.replicasets.add_handlers(
            Handlers(
                on_add=self._enqueue,
                on_update=lambda old, new: self._enqueue(new),
                on_delete=self._rs_deleted,
            )
        )
        self.pods.add_handlers(
            Handlers(
                on_add=self._pod_added, on_update=self._pod_updated, on_delete=self._pod_deleted
            )
        )

    # ---- event handlers ----

    def _enqueue(self, rs: Obj) -> None:
        self.queue.add(object_key(rs))

    def _rs_deleted(self, rs: Obj) -> None:
        self.expectations.forget(object_key(rs))
        self._enqueue(rs)

    def _owner_key(self, pod: Obj) -> str | None:
        ref = controller_ref(pod)
        if ref is None or ref.get("kind") != "ReplicaSet":
            return None
        key = f"{namespace_of(pod)}/{ref['name']}"
        rs = self.replicasets.get(key)
        if rs is None or uid_of(rs) != ref.get("uid"):
            return None
        return key

    def _matching(self, pod: Obj) -> list[str]:
        labels = labels_of(pod)
        return [
            object_key(rs)
            for rs in self.replicasets.list()
            if namespace_of(rs) == namespace_of(pod)
            and selector_matches(rs["spec"].get("selector"), labels)
        ]

    def _pod_added(self, pod: Obj) -> None:
        owner = self._owner_key(pod)
        if owner is not None:
            self.expectations.creation_observed(owner)
            self.queue.add(owner)
        elif controller_ref(pod) is None:
            for key in self._matching(pod):  # an orphan: someone may adopt it
                self.queue.add(key)

    def _pod_updated(self, old: Obj, new: Obj) -> None:
        for pod in (old, new):
            owner = self._owner_key(pod)
            if owner is not None:
                self.queue.add(owner)
            elif controller_ref(pod) is None:
                for key in self._matching(pod):
                    self.queue.add(key)

    def _pod_deleted(self, pod: Obj) -> None:
        self.ready_since.pop(object_key(pod), None)
        owner = self._owner_key(pod)
        if owner is not None:
            self.expectations.deletion_observed(owner, object_key(pod))
            self.queue.add(owner)

    # ---- sync ----

    async def run(self) -> None:
        await wait_synced(self.replicasets, self.pods)
        emit("controller_synced", controller="replicaset")
        await run_workers("replicaset", self.queue, self.sync, self.workers)

    async def _claim(self, rs: Obj) -> list[Obj]:
        """The active pods this ReplicaSet owns, after adopting orphans and releasing misfits."""
        selector = rs["spec"].get("selector")
        namespace, uid = namespace_of(rs), uid_of(rs)
        owned: list[Obj] = []
        for pod in self.pods.list():
            if namespace_of(pod) != namespace or not pod_is_active(pod):
                continue
            ref = controller_ref(pod)
            matches = selector_matches(selector, labels_of(pod))
            if ref is not None and ref.get("uid") == uid:
                if matches:
                    owned.append(pod)
                else:
                    await self._set_owner(pod, None)
                    emit("pod_released", replicaset=object_key(rs), pod=object_key(pod))
            elif ref is None and matches and not rs["metadata"].get("deletionTimestamp"):
                owned.append(await self._set_owner(pod, rs))
                emit("pod_adopted", replicaset=object_key(rs), pod=object_key(pod))
        return owned

    async def _set_owner(self, pod: Obj, rs: Obj | None) -> Obj:
        updated = copy.deepcopy(pod)
        refs = [r for r in meta(updated).get("ownerReferences") or [] if not r.get("controller")]
        if rs is not None:
            refs.append(owner_reference(rs))
        meta(updated)["ownerReferences"] = refs
        return await self.store.update(self.writer, "pods", updated)

    async def sync(self, key: str) -> None:
        rs = self.replicasets.get(key)
        if rs is None:
            self.expectations.forget(key)
            return
        needs_sync = self.expectations.satisfied(key)
        owned = await self._claim(rs)
        if needs_sync and not rs["metadata"].get("deletionTimestamp"):
            await self._manage(key, rs, owned)
        deleted = self.expectations.pending_deletions(key)
        await self._update_status(key, rs, [p for p in owned if object_key(p) not in deleted])

    async def _manage(self, key: str, rs: Obj, owned: list[Obj]) -> None:
        wanted = int(rs["spec"].get("replicas", 1))
        diff = len(owned) - wanted
        if diff < 0:
            count = min(-diff, BURST_REPLICAS)
            self.expectations.expect_creations(key, count)
            await self._create(key, rs, count)
        elif diff > 0:
            victims = sorted(owned, key=_deletion_rank)[: min(diff, BURST_REPLICAS)]
            self.expectations.expect_deletions(key, {object_key(p) for p in victims})
            for pod in victims:
                try:
                    await self.store.delete(self.writer, "pods", pod)
                    emit("pod_deleted", replicaset=key, pod=object_key(pod), reason="surplus")
                except ConflictError:
                    self.expectations.deletion_observed(key, object_key(pod))
                    raise

    def _new_pod(self, rs: Obj) -> Obj:
        template = rs["spec"].get("template") or {}
        template_meta = template.get("metadata") or {}
        suffix = "".join(random.choice(_NAME_CHARS) for _ in range(5))
        pod = new_object(
            "pods",
            f"{name_of(rs)}-{suffix}",
            namespace_of(rs),
            labels=template_meta.get("labels") or {},
            spec=copy.deepcopy(template.get("spec") or {}),
            status={"phase": "Pending"},
        )
        meta(pod)["generateName"] = f"{name_of(rs)}-"
        meta(pod)["ownerReferences"] = [owner_reference(rs)]
        return pod

    async def _create(self, key: str, rs: Obj, count: int) -> None:
        """Create ``count`` pods in slow-start batches; a failure skips the rest."""
        remaining, batch = count, 1
        while remaining > 0:
            size = min(batch, remaining)
            failures: list[Exception] = []

            async with anyio.create_task_group() as tasks:
                for _ in range(size):
                    tasks.start_soon(self._create_one, key, rs, failures)
            remaining -= size
            if failures:
                for _ in range(remaining):  # never attempted: not expected either
                    self.expectations.creation_observed(key)
                raise failures[0]
            batch *= 2

    async def _create_one(self, key: str, rs: Obj, failures: list[Exception]) -> None:
        pod = self._new_pod(rs)
        try:
            created = await self.store.create(self.writer, "pods", pod)
        except (ConflictError, EtcdError) as error:
            failures.append(error)
            if not await self._exists(pod):
                self.expectations.creation_observed(key)
            return
        emit(
            "pod_created",
            replicaset=key,
            pod=object_key(created),
            revision=int(created["metadata"]["resourceVersion"]),
        )

    async def _exists(self, pod: Obj) -> bool:
        """After an ambiguous failure: did the create land? (if so the informer will see it)."""
        try:
            return await self.store.get("pods", name_of(pod), namespace_of(pod)) is not None
        except EtcdError:
            return True  # unknown: keep expecting it; the expectation expires eventually

    def _available(self, key: str, rs: Obj, pods: list[Obj]) -> int:
        """Pods ready for minReadySeconds; asks for a resync when the next one will be."""
        min_ready = float(rs["spec"].get("minReadySeconds") or 0)
        now = anyio.current_time()
        available, next_due = 0, None
        for pod in pods:
            if not pod_ready(pod):
                self.ready_since.pop(object_key(pod), None)
                continue
            since = self.ready_since.setdefault(object_key(pod), now)
            if now - since >= min_ready:
                available += 1
            else:
                due = since + min_ready - now
                next_due = due if next_due is None else min(next_due, due)
        if next_due is not None:
            self.queue.add_after(key, next_due)
        return available

    async def _update_status(self, key: str, rs: Obj, owned: list[Obj]) -> None:
        template_labels = ((rs["spec"].get("template") or {}).get("metadata") or {}).get(
            "labels"
        ) or {}
        status = {
            "replicas": len(owned),
            "fullyLabeledReplicas": sum(
                1 for p in owned if template_labels.items() <= labels_of(p).items()
            ),
            "readyReplicas": sum(1 for p in owned if pod_ready(p)),
            "availableReplicas": self._available(key, rs, owned),
            "observedGeneration": generation_of(rs) or 1,
        }
        current = rs.get("status") or {}
        if all(current.get(k) == v for k, v in status.items()):
            return
        updated = copy.deepcopy(rs)
        updated["status"] = {**current, **status}
        await self.store.update(self.writer, "replicasets", updated)

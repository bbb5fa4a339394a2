"""The Workloads page's data and actions.

Objects come from one informer per resource (:mod:`controllers.informer`:
list, then watch), and every change is pushed to the browsers as an
``object`` update. The resources shown are listed in :data:`RESOURCES`; a
new kind needs an entry there, in :data:`SCALABLE` if it has
``spec.replicas``, and a table on the page. How a Deployment relates to its
ReplicaSets and pods (owner references) is worked out by the page from the
objects it has.

Actions are what a user does with ``kubectl``: unfenced (the dashboard is
not a leader-elected controller) but optimistic. Each carries the
``resourceVersion`` the page showed, and the write compares it with the
key's mod_revision in the store, so a change made in between is reported as
a conflict instead of being overwritten. A change of ``spec`` increments
``metadata.generation`` (as :meth:`controllers.store.Store.modify` does, and
kube-apiserver for workloads): controllers report the generation they acted
on as ``status.observedGeneration``, and the Deployment controller relies on
it to know a rollout or a scale is complete.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import anyio

from controllers.informer import Handlers, Informer
from controllers.objects import KINDS, Obj, bump_generation, meta, new_object
from controllers.store import ConflictError, DirectWriter, Store
from dashboard.errors import AlreadyExists, BadRequest, Conflict, Invalid, NotFound
from dashboard.hub import Hub, Update

RESOURCES = ("nodes", "deployments", "replicasets", "pods")
SCALABLE = ("deployments", "replicasets")
MAX_REPLICAS = 100
# Kubernetes' DNS-1123 label: the names of what the form creates (also a label value).
_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(m|Ki|Mi|Gi|Ti|k|M|G|T)?$")


@dataclass(frozen=True)
class ObjectRef:
    resource: str
    name: str
    namespace: str = ""


def _expected_version(body: dict[str, Any]) -> int:
    raw = body.get("resourceVersion")
    if raw is None:
        raise BadRequest("resourceVersion is required (the version the change is based on)")
    try:
        version = int(str(raw))
    except ValueError:
        raise BadRequest(f"resourceVersion {raw!r} is not a number") from None
    if version <= 0:
        raise BadRequest(f"resourceVersion {raw!r} must be positive")
    return version


def _replicas(raw: Any) -> int:
    if isinstance(raw, bool) or not isinstance(raw, int):
        raise Invalid(f"replicas must be a whole number, not {raw!r}")
    if not 0 <= raw <= MAX_REPLICAS:
        raise Invalid(f"replicas must be between 0 and {MAX_REPLICAS}, not {raw}")
    return raw


def _namespace(obj: Obj) -> str:
    return str(obj["metadata"].get("namespace", ""))


class Workloads:
    """Informers for :data:`RESOURCES`, publishing to the hub; the actions on them."""

    def __init__(self, store: Store, hub: Hub) -> None:
        self.store = store
        self.hub = hub
        self.writer = DirectWriter(store.client)
        self.informers = {resource: Informer(store, resource) for resource in RESOURCES}
        for resource, informer in self.informers.items():
            informer.add_handlers(self._handlers(resource))
        hub.add_source(lambda: [self._snapshot(r, i) for r, i in self.informers.items()])

    def _snapshot(self, resource: str, informer: Informer) -> Update:
        items = sorted(informer.list(), key=lambda o: (_namespace(o), o["metadata"]["name"]))
        return Update(
            "objects",
            {"resource": resource, "items": items, "synced": informer.synced.is_set()},
        )

    def _handlers(self, resource: str) -> Handlers:
        def publish(kind: str, obj: Obj) -> None:
            self.hub.publish("object", {"resource": resource, "type": kind, "object": obj})

        return Handlers(
            on_add=lambda obj: publish("ADDED", obj),
            on_update=lambda old, new: publish("MODIFIED", new),
            on_delete=lambda obj: publish("DELETED", obj),
        )

    async def run(self) -> None:
        async with anyio.create_task_group() as tasks:
            for informer in self.informers.values():
                tasks.start_soon(informer.run)
            for resource, informer in self.informers.items():
                await informer.synced.wait()
                self.hub.publish("objects", self._snapshot(resource, informer).data)

    def list(self, resource: str) -> list[Obj]:
        informer = self.informers.get(resource)
        if informer is None:
            raise NotFound(f"unknown resource {resource!r}; known: {', '.join(RESOURCES)}")
        return informer.list()

    # ---- actions ----

    async def _current(self, ref: ObjectRef) -> Obj:
        if ref.resource not in KINDS:
            raise NotFound(f"unknown resource {ref.resource!r}")
        found = await self.store.get(ref.resource, ref.name, ref.namespace)
        if found is None:
            where = f"{ref.namespace}/{ref.name}" if ref.namespace else ref.name
            raise NotFound(f"{ref.resource} {where} not found")
        return found

    async def _update(self, ref: ObjectRef, expected: int, change: Callable[[Obj], None]) -> Obj:
        """Apply ``change`` to the object and write it, only if the store still has
        ``expected`` as its resourceVersion."""
        obj = await self._current(ref)
        current = meta(obj)["resourceVersion"]
        changed = copy.deepcopy(obj)
        change(changed)
        bump_generation(obj, changed)
        meta(changed)["resourceVersion"] = str(expected)
        try:
            return await self.store.update(self.writer, ref.resource, changed)
        except ConflictError:
            where = f"{ref.namespace}/{ref.name}" if ref.namespace else ref.name
            raise Conflict(
                f"{ref.resource} {where} changed since resourceVersion {expected}"
                f" (now {current}); look again and retry",
                currentResourceVersion=current,
            ) from None

    async def scale(self, ref: ObjectRef, body: dict[str, Any]) -> Obj:
        """Set ``spec.replicas`` of a Deployment or ReplicaSet (``kubectl scale``).

        A ReplicaSet a Deployment controls can be scaled too, as with
        kube-apiserver, but its Deployment's controller sets it back.
        """
        if ref.resource not in SCALABLE:
            raise NotFound(f"{ref.resource} cannot be scaled; scalable: {', '.join(SCALABLE)}")
        replicas = _replicas(body.get("replicas"))
        expected = _expected_version(body)

        def set_replicas(obj: Obj) -> None:
            obj.setdefault("spec", {})["replicas"] = replicas

        return await self._update(ref, expected, set_replicas)

    async def set_unschedulable(self, name: str, body: dict[str, Any], value: bool) -> Obj:
        """Cordon (``value`` True) or uncordon a node, as ``kubectl cordon``."""
        expected = _expected_version(body)

        def mark(obj: Obj) -> None:
            spec = obj.setdefault("spec", {})
            if value:
                spec["unschedulable"] = True
            else:
                spec.pop("unschedulable", None)

        return await self._update(ObjectRef("nodes", name), expected, mark)

    async def delete(self, ref: ObjectRef, body: dict[str, Any]) -> int:
        """Delete a pod if unchanged since ``resourceVersion``; returns the store revision."""
        if ref.resource != "pods":
            raise NotFound(f"deleting {ref.resource} is not offered; pods only")
        expected = _expected_version(body)
        obj = await self._current(ref)
        current = meta(obj)["resourceVersion"]
        meta(obj)["resourceVersion"] = str(expected)
        try:
            return await self.store.delete(self.writer, ref.resource, obj)
        except ConflictError:
            raise Conflict(
                f"pod {ref.namespace}/{ref.name} changed since resourceVersion {expected}"
                f" (now {current}); look again and retry",
                currentResourceVersion=current,
            ) from None

    async def create_replicaset(self, body: dict[str, Any]) -> Obj:
        """A ReplicaSet from the page's form: name, namespace, replicas, image, requests."""
        name = body.get("name")
        namespace = body.get("namespace") or "default"
        image = body.get("image")
        if not isinstance(name, str) or not _LABEL.match(name):
            raise Invalid(f"name {name!r}: lower-case letters, digits and '-', at most 63")
        if not isinstance(namespace, str) or not _LABEL.match(namespace):
            raise Invalid(f"namespace {namespace!r}: lower-case letters, digits and '-'")
        if not isinstance(image, str) or not image.strip() or len(image) > 512:
            raise Invalid("image: a container image name is required")
        replicas = _replicas(body.get("replicas"))
        requests: dict[str, str] = {}
        for resource in ("cpu", "memory"):
            value = body.get(resource)
            if value in (None, ""):
                continue
            if not isinstance(value, str) or not _QUANTITY.match(value):
                raise Invalid(f"{resource} {value!r} is not a quantity (e.g. 250m, 128Mi)")
            requests[resource] = value
        labels = {"app": name}
        container: dict[str, Any] = {"name": name, "image": image.strip()}
        if requests:
            container["resources"] = {"requests": requests}
        replicaset = new_object(
            "replicasets",
            name,
            namespace,
            labels=labels,
            spec={
                "replicas": replicas,
                "selector": {"matchLabels": labels},
                "template": {"metadata": {"labels": labels}, "spec": {"containers": [container]}},
            },
        )
        try:
            return await self.store.create(self.writer, "replicasets", replicaset)
        except ConflictError:
            raise AlreadyExists(f"replicasets {namespace}/{name} already exists") from None

"""Read-your-writes on an informer cache.

A controller that writes an object and syncs again before its informer has
seen that write would act on the older version (and count something twice).
:class:`OwnWrites` remembers the revision of each object the controller
wrote or deleted until the informer has caught up with it; until then the
controller waits, and the informer's event for the write requeues it.
"""

from __future__ import annotations

from dataclasses import dataclass

import anyio

from controllers.informer import Handlers, Informer
from controllers.objects import Obj, object_key, resource_version

TTL = 60.0  # a write the informer has not shown by then is no longer waited for


@dataclass
class _Write:
    revision: int
    deleted: bool
    at: float
    obj: Obj


class OwnWrites:
    def __init__(self, informer: Informer, *, ttl: float = TTL) -> None:
        self.informer = informer
        self.ttl = ttl
        self._writes: dict[str, _Write] = {}
        informer.add_handlers(
            Handlers(
                on_add=self._seen,
                on_update=lambda old, new: self._seen(new),
                on_delete=self._gone,
            )
        )

    def _gone(self, obj: Obj) -> None:
        self._writes.pop(object_key(obj), None)

    def _seen(self, obj: Obj) -> None:
        write = self._writes.get(object_key(obj))
        if write is not None and resource_version(obj) >= write.revision:
            del self._writes[object_key(obj)]

    def wrote(self, obj: Obj) -> None:
        """``obj`` as the store returned it after a create or update."""
        self._writes[object_key(obj)] = _Write(
            resource_version(obj), False, anyio.current_time(), obj
        )

    def deleted(self, obj: Obj, revision: int) -> None:
        self._writes[object_key(obj)] = _Write(revision, True, anyio.current_time(), obj)

    def pending(self, key: str) -> bool:
        """The cache does not show our last write of this object yet."""
        write = self._writes.get(key)
        if write is None:
            return False
        if anyio.current_time() - write.at > self.ttl:
            del self._writes[key]
            return False
        cached = self.informer.get(key)
        if write.deleted:
            return cached is not None and resource_version(cached) < write.revision
        return cached is None or resource_version(cached) < write.revision

    def any_pending(self, namespace: str) -> bool:
        return any(
            self.pending(key) for key in list(self._writes) if key.startswith(f"{namespace}/")
        )

    def latest(self, obj: Obj) -> Obj:
        """The newer of the cached object and our last write of it."""
        key = object_key(obj)
        cached = self.informer.get(key) or obj
        write = self._writes.get(key)
        if write is not None and not write.deleted and write.revision > resource_version(cached):
            return write.obj
        return cached

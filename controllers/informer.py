"""An informer: list at a revision, watch from the next one, keep a local cache.

As client-go's shared informer: the first list fills the cache (``synced`` is
set after it), then a watch from ``revision + 1`` keeps it current and calls
the handlers (add/update/delete). If the watch start revision was compacted
(or the watch breaks for good) the informer lists again and diffs the new
list against its cache, so handlers see the deletions and changes they
missed. Every ``resync_period`` each cached object is handed to the update
handlers again, so level-driven controllers re-check everything.

Handlers are synchronous and must be quick (they usually enqueue a key).
Cached objects are shared: callers copy before modifying.
"""

from __future__ import annotations

import builtins
import logging
from collections.abc import Callable
from dataclasses import dataclass

import anyio

from controllers.objects import Obj, resource_version
from controllers.store import Store, decode
from kvstore._pb.mvccpb import kv_pb2
from kvstore.client import CompactedError, EtcdError

log = logging.getLogger(__name__)


def _ignore_one(obj: Obj) -> None:
    pass


def _ignore_two(old: Obj, new: Obj) -> None:
    pass


@dataclass
class Handlers:
    on_add: Callable[[Obj], None] = _ignore_one
    on_update: Callable[[Obj, Obj], None] = _ignore_two
    on_delete: Callable[[Obj], None] = _ignore_one


class Informer:
    def __init__(
        self,
        store: Store,
        resource: str,
        namespace: str = "",
        *,
        resync_period: float = 0.0,
        retry_period: float = 0.5,
    ) -> None:
        self.store = store
        self.resource = resource
        self.namespace = namespace
        self.resync_period = resync_period
        self.retry_period = retry_period
        self._base = store.resource_prefix(resource)
        self._prefix = store.resource_prefix(resource, namespace)
        self._cache: dict[str, Obj] = {}
        self._handlers: list[Handlers] = []
        self.revision = 0  # every event up to this store revision is in the cache
        self.lists = 0  # how many times the informer listed (1 + re-lists)
        self.synced = anyio.Event()
        self._changed = anyio.Event()

    # ---- the cache ----

    def add_handlers(self, handlers: Handlers) -> None:
        self._handlers.append(handlers)

    def get(self, key: str) -> Obj | None:
        """By ``<namespace>/<name>`` (or ``<name>`` for cluster-scoped objects)."""
        return self._cache.get(key)

    def list(self) -> builtins.list[Obj]:
        return [*self._cache.values()]

    async def wait_changed(self) -> None:
        """Return after the cache next changes (or is resynced)."""
        await self._changed.wait()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    def _key(self, raw_key: bytes) -> str:
        return raw_key.decode()[len(self._base) :]

    # ---- dispatch ----

    def _added(self, key: str, obj: Obj) -> None:
        old = self._cache.get(key)
        self._cache[key] = obj
        for handlers in self._handlers:
            if old is None:
                handlers.on_add(obj)
            else:
                handlers.on_update(old, obj)

    def _deleted(self, key: str) -> None:
        old = self._cache.pop(key, None)
        if old is not None:
            for handlers in self._handlers:
                handlers.on_delete(old)

    def _replace(self, objects: builtins.list[Obj], revision: int) -> None:
        """Make the cache equal a fresh list, telling handlers what changed."""
        fresh = {self._key(self.store.key_of(self.resource, o).encode()): o for o in objects}
        for key in [k for k in self._cache if k not in fresh]:
            self._deleted(key)
        for key, obj in fresh.items():
            old = self._cache.get(key)
            if old is None or resource_version(old) != resource_version(obj):
                self._added(key, obj)
        self.revision = revision
        self.lists += 1
        self._notify()

    # ---- the loops ----

    async def _after_list(self) -> None:
        """Hook between the list and the watch (tests use it to force a compaction)."""

    async def _list_and_watch(self) -> None:
        objects, revision = await self.store.list(self.resource, self.namespace)
        self._replace(objects, revision)
        self.synced.set()
        await self._after_list()
        client = self.store.client
        async with client.watch(self._prefix, prefix=True, start_revision=revision + 1) as watch:
            async for batch in watch:
                for event in batch.events:
                    key = self._key(event.kv.key)
                    if event.type == kv_pb2.Event.DELETE:
                        self._deleted(key)
                    else:
                        self._added(key, decode(event.kv.value, event.kv.mod_revision))
                self.revision = max(self.revision, batch.revision)
                self._notify()

    async def _resync_loop(self) -> None:
        while True:
            await anyio.sleep(self.resync_period)
            for obj in list(self._cache.values()):
                for handlers in self._handlers:
                    handlers.on_update(obj, obj)

    async def run(self) -> None:
        """List and watch until cancelled."""
        async with anyio.create_task_group() as tasks:
            if self.resync_period > 0:
                tasks.start_soon(self._resync_loop)
            while True:
                try:
                    await self._list_and_watch()
                    log.info("%s informer: watch ended; re-listing", self.resource)
                except CompactedError as error:
                    log.info("%s informer: %s; re-listing", self.resource, error)
                    continue
                except EtcdError as error:
                    log.warning("%s informer: %s; re-listing", self.resource, error)
                await anyio.sleep(self.retry_period)  # retry pacing, not synchronisation


async def wait_synced(*informers: Informer) -> None:
    for informer in informers:
        await informer.synced.wait()


class Informers:
    """Shared informers (client-go's SharedInformerFactory): the controllers of
    one process get one informer per resource, so each resource is listed and
    watched once however many controllers follow it.

    Controllers take their informers when they are built; :meth:`run` then
    runs every informer taken so far until cancelled.
    """

    def __init__(self, store: Store, *, resync_period: float = 0.0) -> None:
        self.store = store
        self.resync_period = resync_period
        self._informers: dict[tuple[str, str], Informer] = {}
        self._running = False

    def get(self, resource: str, namespace: str = "") -> Informer:
        key = (resource, namespace)
        if key not in self._informers:
            assert not self._running, f"{resource} informer asked for after the start"
            self._informers[key] = Informer(
                self.store, resource, namespace, resync_period=self.resync_period
            )
        return self._informers[key]

    async def run(self) -> None:
        self._running = True
        async with anyio.create_task_group() as tasks:
            for informer in self._informers.values():
                tasks.start_soon(informer.run)

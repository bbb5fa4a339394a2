"""The informer and the store layer against a real etcd."""

from __future__ import annotations

import copy
import uuid
from collections.abc import Callable

import anyio
import pytest

from controllers.informer import Handlers, Informer
from controllers.objects import Obj, name_of, new_object, resource_version
from controllers.store import ConflictError, DirectWriter, Store
from kvstore.client import Client
from kvstore.local.etcd import EtcdCluster


class Recorder:
    """Handler calls as (kind, name, resourceVersion), with a way to await them."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, int]] = []
        self._changed = anyio.Event()

    def handlers(self) -> Handlers:
        return Handlers(
            on_add=lambda o: self._record("add", o),
            on_update=lambda old, new: self._record("resync" if old is new else "update", new),
            on_delete=lambda o: self._record("delete", o),
        )

    def _record(self, kind: str, obj: Obj) -> None:
        self.calls.append((kind, name_of(obj), resource_version(obj)))
        self._changed.set()
        self._changed = anyio.Event()

    async def wait_until(self, predicate: Callable[[], bool], timeout: float = 20) -> None:
        with anyio.fail_after(timeout):
            while not predicate():
                await self._changed.wait()

    def kinds(self, name: str) -> list[str]:
        return [kind for kind, n, _ in self.calls if n == name and kind != "resync"]


def pod(name: str) -> Obj:
    return new_object("pods", name, "default", labels={"app": "x"})


def fresh_store(client: Client) -> Store:
    return Store(client, f"/t-{uuid.uuid4().hex[:10]}/registry")


async def test_list_then_watch(etcd: EtcdCluster) -> None:
    async with Client(etcd.endpoints) as client:
        store, writer = fresh_store(client), DirectWriter(client)
        a = await store.create(writer, "pods", pod("a"))
        informer = Informer(store, "pods")
        recorder = Recorder()
        informer.add_handlers(recorder.handlers())
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(informer.run)
            with anyio.fail_after(20):
                await informer.synced.wait()
            assert recorder.calls == [("add", "a", resource_version(a))]
            b = await store.create(writer, "pods", pod("b"))
            changed = copy.deepcopy(a)
            changed["metadata"]["labels"]["app"] = "y"
            changed = await store.update(writer, "pods", changed)
            await store.delete(writer, "pods", b)
            await recorder.wait_until(lambda: recorder.kinds("b") == ["add", "delete"])
            await recorder.wait_until(lambda: recorder.kinds("a") == ["add", "update"])
            cached = informer.get("default/a")
            assert cached is not None and cached["metadata"]["labels"] == {"app": "y"}
            assert resource_version(cached) == resource_version(changed)
            assert informer.get("default/b") is None
            assert informer.lists == 1
            tasks.cancel_scope.cancel()


class CompactingInformer(Informer):
    """Changes the store and compacts it between the first list and its watch."""

    def __init__(self, store: Store, writer: DirectWriter, victim: Obj, changed: Obj) -> None:
        super().__init__(store, "pods", retry_period=0.05)
        self.writer, self.victim, self.changed = writer, victim, changed
        self.compacted = False

    async def _after_list(self) -> None:
        if self.compacted:
            return
        self.compacted = True
        await self.store.delete(self.writer, "pods", self.victim)
        await self.store.update(self.writer, "pods", self.changed)
        created = await self.store.create(self.writer, "pods", pod("new"))
        await self.store.client.compact(resource_version(created))


async def test_relist_after_compaction(etcd: EtcdCluster) -> None:
    async with Client(etcd.endpoints) as client:
        store, writer = fresh_store(client), DirectWriter(client)
        victim = await store.create(writer, "pods", pod("victim"))
        kept = await store.create(writer, "pods", pod("kept"))
        changed = copy.deepcopy(kept)
        changed["metadata"]["labels"]["app"] = "changed"
        informer = CompactingInformer(store, writer, victim, changed)
        recorder = Recorder()
        informer.add_handlers(recorder.handlers())
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(informer.run)
            # The watch from the first list's revision + 1 fails (compacted); the
            # re-list shows the handlers exactly what they missed.
            await recorder.wait_until(lambda: recorder.kinds("new") == ["add"])
            assert recorder.kinds("victim") == ["add", "delete"]
            assert recorder.kinds("kept") == ["add", "update"]
            assert informer.lists == 2
            assert sorted(name_of(o) for o in informer.list()) == ["kept", "new"]
            cached = informer.get("default/kept")
            assert cached is not None and cached["metadata"]["labels"]["app"] == "changed"
            # And it keeps watching from the new list's revision.
            await store.create(writer, "pods", pod("after"))
            await recorder.wait_until(lambda: recorder.kinds("after") == ["add"])
            tasks.cancel_scope.cancel()


async def test_periodic_resync_redelivers_cached_objects(etcd: EtcdCluster) -> None:
    async with Client(etcd.endpoints) as client:
        store, writer = fresh_store(client), DirectWriter(client)
        await store.create(writer, "pods", pod("a"))
        informer = Informer(store, "pods", resync_period=0.1)
        recorder = Recorder()
        informer.add_handlers(recorder.handlers())
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(informer.run)
            await recorder.wait_until(
                lambda: sum(1 for kind, _, _ in recorder.calls if kind == "resync") >= 2
            )
            tasks.cancel_scope.cancel()


async def test_writes_are_optimistic(etcd: EtcdCluster) -> None:
    async with Client(etcd.endpoints) as client:
        store, writer = fresh_store(client), DirectWriter(client)
        a = await store.create(writer, "pods", pod("a"))
        assert a["metadata"]["uid"] and resource_version(a) > 0
        with pytest.raises(ConflictError):
            await store.create(writer, "pods", pod("a"))
        first = copy.deepcopy(a)
        first["spec"]["nodeName"] = "n1"
        second = copy.deepcopy(a)
        second["spec"]["nodeName"] = "n2"
        await store.update(writer, "pods", first)
        with pytest.raises(ConflictError):
            await store.update(writer, "pods", second)  # read before the first write
        with pytest.raises(ConflictError):
            await store.delete(writer, "pods", a)
        stored = await store.get("pods", "a", "default")
        assert stored is not None and stored["spec"]["nodeName"] == "n1"
        assert (
            "resourceVersion"
            not in (await client.get(store.key_of("pods", a))).kvs[0].value.decode()
        )

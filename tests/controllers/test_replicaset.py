"""The ReplicaSet controller in-process against a real etcd (unfenced writer)."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import anyio

from controllers.informer import Informer, Informers
from controllers.objects import Obj, controller_ref, new_object, uid_of
from controllers.replicaset import Expectations, ReplicaSetController
from controllers.store import DirectWriter, Store
from kvstore.client import Client
from kvstore.local.etcd import EtcdCluster
from tests.controllers.scenario import replicaset


def owned_by(pods: list[Obj], rs: Obj) -> list[Obj]:
    return [p for p in pods if (controller_ref(p) or {}).get("uid") == uid_of(rs)]


async def test_expectations() -> None:
    expectations = Expectations(ttl=60)
    assert expectations.satisfied("rs")
    expectations.expect_creations("rs", 2)
    assert not expectations.satisfied("rs")
    expectations.creation_observed("rs")
    assert not expectations.satisfied("rs")
    expectations.creation_observed("rs")
    assert expectations.satisfied("rs")
    expectations.expect_deletions("rs", {"default/a", "default/b"})
    expectations.deletion_observed("rs", "default/a")
    expectations.deletion_observed("rs", "default/a")  # the same pod twice counts once
    assert not expectations.satisfied("rs")
    expectations.deletion_observed("rs", "default/b")
    assert expectations.satisfied("rs")
    expired = Expectations(ttl=0.0)
    expired.expect_creations("rs", 1)
    await anyio.sleep(0.01)  # let the (zero) TTL pass
    assert expired.satisfied("rs")


async def test_adopts_orphans_creates_and_deletes(etcd: EtcdCluster) -> None:
    async with Client(etcd.endpoints) as client:
        store = Store(client, f"/t-{uuid.uuid4().hex[:10]}/registry")
        writer = DirectWriter(client)
        labels = {"app": "web"}
        for name in ("orphan-1", "orphan-2"):
            await store.create(writer, "pods", new_object("pods", name, labels=labels))
        await store.create(writer, "pods", new_object("pods", "other", labels={"app": "db"}))
        rs = await store.create(writer, "replicasets", replicaset("web", 3))
        informers = Informers(store, resync_period=1.0)
        controller = ReplicaSetController(store, writer, informers, workers=2)

        async def settle(informer: Informer, predicate: Callable[[list[Obj]], bool]) -> None:
            with anyio.fail_after(20):
                while not (informer.synced.is_set() and predicate(informer.list())):
                    await informer.wait_changed()

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(informers.run)
            tasks.start_soon(controller.run)
            await settle(controller.pods, lambda ps: len(owned_by(ps, rs)) == 3)
            pods = controller.pods.list()
            names = {p["metadata"]["name"] for p in owned_by(pods, rs)}
            assert {"orphan-1", "orphan-2"} <= names  # adopted, and one created
            assert len(pods) == 4  # "other" is left alone
            await store.modify(
                writer, "replicasets", "web", "default", lambda o: o["spec"].update(replicas=1)
            )
            await settle(controller.pods, lambda ps: len(owned_by(ps, rs)) == 1)
            assert len(controller.pods.list()) == 2  # the survivor and "other"
            await settle(
                controller.replicasets,
                lambda rss: rss[0].get("status", {}).get("replicas") == 1,
            )
            tasks.cancel_scope.cancel()

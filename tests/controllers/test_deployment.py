"""The Deployment controller with the ReplicaSet controller, the scheduler and node
agents in this process, against a real etcd and our store: creation, scale,
rollout, rollback, history limit, Recreate and pause."""

from __future__ import annotations

import uuid
from typing import Any

import anyio

from controllers import deploymentutil as du
from controllers.objects import Obj, annotations_of, controller_ref, labels_of, new_object, uid_of
from controllers.replicaset import pod_ready
from kvstore.client import Client
from kvstore.local.etcd import EtcdCluster
from tests.controllers.harness import History
from tests.controllers.plane import Plane, settle, start_plane


def deployment(name: str, replicas: int, image: str, **spec: Any) -> Obj:
    labels = {"app": name}
    container = {
        "name": "app",
        "image": image,
        "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}},
    }
    return new_object(
        "deployments",
        name,
        labels=labels,
        spec={
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels}, "spec": {"containers": [container]}},
            **spec,
        },
    )


def image_of(obj: Obj) -> str:
    spec = obj["spec"]["template"]["spec"] if obj["kind"] != "Pod" else obj["spec"]
    return str(spec["containers"][0]["image"])


def owned(rss: list[Obj], d: Obj) -> list[Obj]:
    return [rs for rs in rss if (controller_ref(rs) or {}).get("uid") == uid_of(d)]


def ready_pods(pods: list[Obj], image: str) -> list[Obj]:
    return [p for p in pods if image_of(p) == image and pod_ready(p)]


async def rolled_out(plane: Plane, name: str, replicas: int, image: str) -> Obj:
    """Wait for every replica to run ``image``, no other pod, and the status to say so."""
    pods = plane.informer("pods")
    deployments = plane.informer("deployments")

    def done(ds: list[Obj]) -> bool:
        d = next((d for d in ds if d["metadata"]["name"] == name), None)
        if d is None or image_of(d) != image:
            return False
        status = d.get("status") or {}
        progress = du.condition_of(status, "Progressing") or {}
        return (
            len(pods.list()) == replicas == len(ready_pods(pods.list(), image))
            and (status.get("replicas"), status.get("updatedReplicas")) == (replicas, replicas)
            and status.get("availableReplicas") == replicas
            and status.get("observedGeneration") == d["metadata"]["generation"]
            and progress.get("reason") == du.NEW_RS_AVAILABLE
        )

    found = await settle(deployments, done)
    return next(d for d in found if d["metadata"]["name"] == name)


async def test_create_scale_rollout_rollback_and_history(etcd: EtcdCluster) -> None:
    async with Client(etcd.endpoints) as client, anyio.create_task_group() as tasks:
        plane = start_plane(tasks, client, f"/t-{uuid.uuid4().hex[:10]}/registry")
        for name in ("n1", "n2"):
            await plane.add_node(name)
        created = await plane.create("deployments", deployment("web", 3, "example/web:1"))
        d = await rolled_out(plane, "web", 3, "example/web:1")
        rss = owned(plane.informer("replicasets").list(), d)
        assert len(rss) == 1
        first = rss[0]
        pod_hash = labels_of(first)[du.POD_TEMPLATE_HASH]
        assert first["metadata"]["name"] == f"web-{pod_hash}"
        assert first["spec"]["selector"]["matchLabels"] == {
            "app": "web",
            "pod-template-hash": pod_hash,
        }
        assert all(
            labels_of(p)[du.POD_TEMPLATE_HASH] == pod_hash for p in plane.informer("pods").list()
        )
        assert annotations_of(first)[du.REVISION] == annotations_of(d)[du.REVISION] == "1"
        assert (du.condition_of(d["status"], "Available") or {})["status"] == "True"
        assert d["spec"]["strategy"]["rollingUpdate"] == {
            "maxSurge": "25%",
            "maxUnavailable": "25%",
        }

        # A scale: the same ReplicaSet grows; no new revision.
        await plane.store.modify(
            plane.writer, "deployments", "web", "default", lambda o: o["spec"].update(replicas=5)
        )
        d = await rolled_out(plane, "web", 5, "example/web:1")
        assert d["metadata"]["generation"] == created["metadata"]["generation"] + 1
        assert [
            rs["metadata"]["name"] for rs in owned(plane.informer("replicasets").list(), d)
        ] == [first["metadata"]["name"]]
        assert annotations_of(d)[du.REVISION] == "1"

        # A new template: a new ReplicaSet (revision 2) takes every pod; the old one stays, empty.
        def set_image(image: str) -> Any:
            return lambda o: o["spec"]["template"]["spec"]["containers"][0].update(image=image)

        await plane.store.modify(
            plane.writer, "deployments", "web", "default", set_image("example/web:2")
        )
        d = await rolled_out(plane, "web", 5, "example/web:2")
        by_name = {
            rs["metadata"]["name"]: rs for rs in owned(plane.informer("replicasets").list(), d)
        }
        assert len(by_name) == 2 and by_name[first["metadata"]["name"]]["spec"]["replicas"] == 0
        second = next(rs for name, rs in by_name.items() if name != first["metadata"]["name"])
        assert annotations_of(second)[du.REVISION] == annotations_of(d)[du.REVISION] == "2"

        # Roll back to the previous revision: the first ReplicaSet again, as revision 3.
        await plane.store.modify(
            plane.writer,
            "deployments",
            "web",
            "default",
            lambda o: o["metadata"].setdefault("annotations", {}).update({du.ROLLBACK_TO: "0"}),
        )
        d = await rolled_out(plane, "web", 5, "example/web:1")
        assert du.ROLLBACK_TO not in annotations_of(d)
        first_again = plane.informer("replicasets").get(f"default/{first['metadata']['name']}")
        assert first_again is not None and first_again["spec"]["replicas"] == 5
        assert annotations_of(first_again)[du.REVISION] == "3"
        assert annotations_of(first_again)[du.REVISION_HISTORY] == "1"
        assert annotations_of(d)[du.REVISION] == "3"

        # No history kept: the empty old ReplicaSet is deleted.
        await plane.store.modify(
            plane.writer,
            "deployments",
            "web",
            "default",
            lambda o: o["spec"].update(revisionHistoryLimit=0),
        )
        await settle(plane.informer("replicasets"), lambda rss: len(rss) == 1)
        assert (
            plane.informer("replicasets").list()[0]["metadata"]["name"] == first["metadata"]["name"]
        )
        tasks.cancel_scope.cancel()


async def test_recreate_and_pause(etcd: EtcdCluster) -> None:
    prefix = f"/t-{uuid.uuid4().hex[:10]}/registry"
    async with Client(etcd.endpoints) as client, anyio.create_task_group() as tasks:
        start = (await client.get(prefix)).header.revision + 1
        history = History(client, prefix, start)
        overlaps: list[int] = []

        def no_old_and_new_together(h: History, revision: int) -> None:
            images = {image_of(p) for p in h.of("pods").values()}
            if len(images) > 1:
                overlaps.append(revision)

        history.checks.append(no_old_and_new_together)
        await tasks.start(history.run)
        plane = start_plane(tasks, client, prefix)
        await plane.add_node("n1")
        await plane.create(
            "deployments", deployment("batch", 2, "example/batch:1", strategy={"type": "Recreate"})
        )
        await rolled_out(plane, "batch", 2, "example/batch:1")
        await plane.store.modify(
            plane.writer,
            "deployments",
            "batch",
            "default",
            lambda o: o["spec"]["template"]["spec"]["containers"][0].update(
                image="example/batch:2"
            ),
        )
        await rolled_out(plane, "batch", 2, "example/batch:2")
        assert not overlaps, f"old and new pods together at revisions {overlaps}"

        # Paused: a template change waits, a scale does not.
        def pause(paused: bool, **change: Any) -> Any:
            def apply(o: Obj) -> None:
                o["spec"]["paused"] = paused
                if "image" in change:
                    o["spec"]["template"]["spec"]["containers"][0]["image"] = change["image"]
                if "replicas" in change:
                    o["spec"]["replicas"] = change["replicas"]

            return apply

        await plane.store.modify(
            plane.writer, "deployments", "batch", "default", pause(True, image="example/batch:3")
        )
        await plane.store.modify(
            plane.writer, "deployments", "batch", "default", pause(True, replicas=3)
        )
        d = await settle(
            plane.informer("deployments"),
            lambda ds: (
                (du.condition_of(ds[0].get("status") or {}, "Progressing") or {}).get("reason")
                == du.PAUSED
                and len(ready_pods(plane.informer("pods").list(), "example/batch:2")) == 3
            ),
        )
        assert len(plane.informer("replicasets").list()) == 2, "no ReplicaSet for a paused template"
        assert d[0]["status"]["updatedReplicas"] == 0
        await plane.store.modify(plane.writer, "deployments", "batch", "default", pause(False))
        await rolled_out(plane, "batch", 3, "example/batch:3")
        assert not overlaps, f"old and new pods together at revisions {overlaps}"
        tasks.cancel_scope.cancel()

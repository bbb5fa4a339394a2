"""The scheduler and the taint-eviction controller on a real etcd and on our store
(in this process): pods assumed in one pass spread by anti-affinity, the reason a
pod fits nowhere recorded on it, and NoExecute taints evicting pods."""

from __future__ import annotations

import time
import uuid
from typing import Any

import anyio

from controllers.objects import Obj, condition, new_object
from kvstore.client import Client
from kvstore.local.etcd import EtcdCluster
from tests.controllers.plane import settle, start_plane

WEB = {"app": "web"}


def pod(name: str, labels: dict[str, str] | None = None, **spec: Any) -> Obj:
    container = {"name": "c", "image": "example/app:1", "resources": {"requests": {"cpu": "100m"}}}
    return new_object("pods", name, labels=labels, spec={"containers": [container], **spec})


def spread(name: str) -> Obj:
    """A web pod that runs on no host where another web pod runs."""
    anti = {
        "requiredDuringSchedulingIgnoredDuringExecution": [
            {"labelSelector": {"matchLabels": WEB}, "topologyKey": "kubernetes.io/hostname"}
        ]
    }
    return pod(name, WEB, affinity={"podAntiAffinity": anti})


def nodes_of(pods: list[Obj]) -> dict[str, str]:
    return {p["metadata"]["name"]: p["spec"].get("nodeName", "") for p in pods}


async def test_anti_affinity_spreads_and_unschedulable_is_recorded(etcd: EtcdCluster) -> None:
    async with Client(etcd.endpoints) as client, anyio.create_task_group() as tasks:
        plane = start_plane(tasks, client, f"/t-{uuid.uuid4().hex[:10]}/registry")
        for name in ("n1", "n2", "n3"):
            await plane.add_node(name, "--node-labels", "zone=a")
        nodes = plane.informer("nodes")
        await settle(nodes, lambda ns: len(ns) == 3)
        pods = plane.informer("pods")
        # Four at once: the scheduler binds them back to back, each decision counting
        # the ones it has just made (assumed) before the informer sees them.
        async with anyio.create_task_group() as creating:
            for i in range(4):
                creating.start_soon(plane.create, "pods", spread(f"web-{i}"))

        def three_bound_one_refused(ps: list[Obj]) -> bool:
            refused = [
                p for p in ps if (condition(p, "PodScheduled") or {}).get("status") == "False"
            ]
            return sum(1 for p in ps if p["spec"].get("nodeName")) == 3 and len(refused) == 1

        await settle(pods, three_bound_one_refused)
        bound = {n for n in nodes_of(pods.list()).values() if n}
        assert bound == {"n1", "n2", "n3"}
        refused = next(p for p in pods.list() if not p["spec"].get("nodeName"))
        scheduled = condition(refused, "PodScheduled")
        assert scheduled is not None
        assert (scheduled["reason"], scheduled["message"]) == (
            "Unschedulable",
            "0/3 nodes are available: 3 node(s) didn't match pod anti-affinity rules.",
        )
        # A fourth node: the waiting pod goes there without waiting out its backoff.
        await plane.add_node("n4")
        await settle(pods, lambda ps: all(p["spec"].get("nodeName") for p in ps))
        assert nodes_of(pods.list())[refused["metadata"]["name"]] == "n4"
        placed = condition(pods.get(f"default/{refused['metadata']['name']}") or {}, "PodScheduled")
        assert placed is not None and placed["status"] == "True"

        # Node affinity: only a node labelled disk=ssd will do; one gets the label.
        ssd = {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [
                        {"matchExpressions": [{"key": "disk", "operator": "In", "values": ["ssd"]}]}
                    ]
                }
            }
        }
        await plane.create("pods", pod("db", affinity=ssd))
        await settle(
            pods,
            lambda ps: any(
                p["metadata"]["name"] == "db"
                and "didn't match Pod's node affinity/selector"
                in (condition(p, "PodScheduled") or {}).get("message", "")
                for p in ps
            ),
        )
        await plane.store.modify(
            plane.writer, "nodes", "n2", "", lambda n: n["metadata"]["labels"].update(disk="ssd")
        )
        await settle(pods, lambda ps: nodes_of(ps)["db"] == "n2")
        tasks.cancel_scope.cancel()


async def test_no_execute_taints_evict(etcd: EtcdCluster) -> None:
    async with Client(etcd.endpoints) as client, anyio.create_task_group() as tasks:
        plane = start_plane(
            tasks,
            client,
            f"/t-{uuid.uuid4().hex[:10]}/registry",
            controllers=("taint-eviction-controller",),
        )
        await plane.add_node("n1")
        drain = {"key": "drain", "operator": "Exists", "effect": "NoExecute"}
        for name, tolerations in (
            ("plain", []),
            ("patient", [{**drain, "tolerationSeconds": 2}]),
            ("stubborn", [drain]),
        ):
            await plane.create("pods", pod(name, nodeName="n1", tolerations=tolerations))
        pods = plane.informer("pods")
        await settle(
            pods,
            lambda ps: (
                len(ps) == 3 and all((p.get("status") or {}).get("phase") == "Running" for p in ps)
            ),
        )
        tainted_at = time.monotonic()
        await plane.store.modify(
            plane.writer,
            "nodes",
            "n1",
            "",
            lambda n: n["spec"]["taints"].append(
                {"key": "drain", "value": "now", "effect": "NoExecute"}
            ),
        )
        await settle(pods, lambda ps: "plain" not in {p["metadata"]["name"] for p in ps})
        plain_gone = time.monotonic() - tainted_at
        assert {p["metadata"]["name"] for p in pods.list()} >= {"patient", "stubborn"}
        await settle(pods, lambda ps: {p["metadata"]["name"] for p in ps} == {"stubborn"})
        patient_gone = time.monotonic() - tainted_at
        assert plain_gone < 2.0 <= patient_gone, (plain_gone, patient_gone)
        # The taint lifted, the node stays as it is: the tolerating pod keeps running.
        with anyio.move_on_after(1.0):  # a bounded look for a wrong eviction
            await settle(pods, lambda ps: not ps)
        assert [p["metadata"]["name"] for p in pods.list()] == ["stubborn"]
        tasks.cancel_scope.cancel()

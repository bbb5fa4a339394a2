"""A 6-replica Deployment rolled to a new template by the real processes, once with a
node killed midway and once with the controller-manager leader killed midway.

Judged from the store's history, revision by revision, from the update on:
the ReplicaSets never ask for more than replicas + maxSurge pods (8), and
never fewer than replicas - maxUnavailable pods (5) are available (Ready;
minReadySeconds is 0). After a node dies, its pods are lost without the
control plane knowing until the node is found unreachable: the bound then
is 5 minus the pods that ran on it. The rollout ends with 6 pods of the new
template Ready on live nodes and the Deployment's status saying so.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import anyio

from controllers import deploymentutil as du
from controllers.objects import Obj, controller_ref, new_object
from controllers.replicaset import pod_ready
from controllers.store import DirectWriter, Store
from kvstore.client import Client
from kvstore.local.etcd import EtcdCluster
from tests.controllers.harness import History, Processes
from tests.controllers.scenario import (
    Names,
    controller_manager_flags,
    election_flags,
    node_flags,
)

REPLICAS, MAX_SURGE, MAX_UNAVAILABLE = 6, 2, 1  # the 25 % defaults for 6 replicas
V1, V2 = "example/web:1", "example/web:2"


def deployment() -> Obj:
    labels = {"app": "web"}
    container = {
        "name": "web",
        "image": V1,
        "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}},
    }
    return new_object(
        "deployments",
        "web",
        labels=labels,
        spec={
            "replicas": REPLICAS,
            "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels}, "spec": {"containers": [container]}},
        },
    )


def image_of(pod: Obj) -> str:
    return str(pod["spec"]["containers"][0]["image"])


@dataclass
class Judge:
    """Per-revision facts from the history, judged at the end."""

    update_revision: int = 0  # the revision of the template change (0: not yet)
    ready: list[tuple[int, dict[str, int]]] = field(default_factory=list)  # rev, node -> Ready
    ever_ready_on: dict[str, set[str]] = field(default_factory=dict)  # node -> pods ever Ready
    spec_sums: list[tuple[int, int]] = field(default_factory=list)
    new_pod_bound = anyio.Event()

    def check(self, h: History, revision: int) -> None:
        pods = h.of("pods")
        per_node: dict[str, int] = {}
        for key, pod in pods.items():
            node = pod["spec"].get("nodeName", "")
            if pod_ready(pod):
                per_node[node] = per_node.get(node, 0) + 1
                self.ever_ready_on.setdefault(node, set()).add(key)
            if node and image_of(pod) == V2:
                self.new_pod_bound.set()
        wanted = sum(
            int(rs["spec"].get("replicas", 0))
            for rs in h.of("replicasets").values()
            if (controller_ref(rs) or {}).get("kind") == "Deployment"
        )
        if self.update_revision and revision >= self.update_revision:
            self.ready.append((revision, per_node))
            self.spec_sums.append((revision, wanted))

    def assert_bounds(self, victim: str = "", killed_at_revision: int = 0) -> int:
        """The least availability seen (counting the victim's pods as lost after its
        death), after checking it against the bound."""
        assert self.ready, "no revision after the update was seen"
        lost = len(self.ever_ready_on.get(victim, set())) if victim else 0
        least = REPLICAS
        for revision, per_node in self.ready:
            dead = victim if victim and revision > killed_at_revision else None
            live = sum(n for node, n in per_node.items() if node != dead)
            bound = REPLICAS - MAX_UNAVAILABLE - (lost if dead else 0)
            assert live >= bound, f"{live} available at revision {revision} (bound {bound})"
            least = min(least, live)
        most = max(total for _, total in self.spec_sums)
        assert most <= REPLICAS + MAX_SURGE, self.spec_sums
        return least


def rolled_out(h: History, dead: str = "") -> bool:
    d = h.of("deployments").get("default/web")
    if d is None:
        return False
    status = d.get("status") or {}
    pods = list(h.of("pods").values())
    good = [
        p for p in pods if image_of(p) == V2 and pod_ready(p) and p["spec"].get("nodeName") != dead
    ]
    progress = du.condition_of(status, "Progressing") or {}
    return (
        len(good) == len(pods) == REPLICAS
        and (status.get("replicas"), status.get("updatedReplicas")) == (REPLICAS, REPLICAS)
        and status.get("availableReplicas") == REPLICAS
        and status.get("observedGeneration") == d["metadata"].get("generation")
        and progress.get("reason") == du.NEW_RS_AVAILABLE
    )


def available_v1(h: History) -> bool:
    d = h.of("deployments").get("default/web")
    return (
        d is not None
        and (d.get("status") or {}).get("availableReplicas") == REPLICAS
        and sum(1 for p in h.of("pods").values() if pod_ready(p)) == REPLICAS
    )


async def update_template(store: Store, writer: DirectWriter) -> int:
    def change(d: Obj) -> None:
        d["spec"]["template"]["spec"]["containers"][0]["image"] = V2

    updated = await store.modify(writer, "deployments", "web", "default", change)
    return int(updated["metadata"]["resourceVersion"])


async def test_rolling_update_with_a_node_killed_midway(etcd: EtcdCluster, tmp_path: Path) -> None:
    names = Names.fresh()
    judge = Judge()
    async with Client(etcd.endpoints) as client, anyio.create_task_group() as tasks:
        start = (await client.get(names.prefix)).header.revision + 1
        history = History(client, names.prefix, start)
        history.checks.append(judge.check)
        await tasks.start(history.run)
        procs = Processes(tasks, etcd.endpoints, tmp_path)
        try:
            for node in ("n1", "n2", "n3"):
                await procs.start(node, "node_agent", *node_flags(names, node))
            await procs.start("cm", "controller_manager", *controller_manager_flags(names))
            await procs.start("sched", "scheduler", *election_flags(names))
            store, writer = Store(client, names.prefix), DirectWriter(client)
            await store.create(writer, "deployments", deployment())
            await history.wait_until(available_v1)

            judge.update_revision = await update_template(store, writer)
            with anyio.fail_after(60):
                await judge.new_pod_bound.wait()
            # Midway: kill the node agent running the most pods.
            per_node: dict[str, int] = {}
            for pod in history.of("pods").values():
                node = pod["spec"].get("nodeName", "")
                per_node[node] = per_node.get(node, 0) + 1
            victim = max(("n1", "n2", "n3"), key=lambda n: per_node.get(n, 0))
            old_pods = sum(1 for p in history.of("pods").values() if image_of(p) == V1)
            killed_at = procs.kill(victim)
            killed_at_revision = (await client.get(names.prefix)).header.revision
            assert old_pods >= REPLICAS - MAX_UNAVAILABLE, "the rollout was not midway"

            await history.wait_until(lambda h: rolled_out(h, dead=victim), timeout=120)
            took = time.monotonic() - killed_at
            least = judge.assert_bounds(victim, killed_at_revision)
            lost = len(judge.ever_ready_on.get(victim, set()))
            print(
                f"node {victim} killed midway ({lost} of its pods had been Ready); the rollout "
                f"ended {took:.1f}s later; at least {least} pods available on live nodes"
            )
        finally:
            await procs.close()
            tasks.cancel_scope.cancel()


async def test_rolling_update_survives_a_controller_manager_failover(
    etcd: EtcdCluster, tmp_path: Path
) -> None:
    names = Names.fresh()
    judge = Judge()
    async with Client(etcd.endpoints) as client, anyio.create_task_group() as tasks:
        start = (await client.get(names.prefix)).header.revision + 1
        history = History(client, names.prefix, start)
        history.checks.append(judge.check)
        await tasks.start(history.run)
        procs = Processes(tasks, etcd.endpoints, tmp_path)
        try:
            for node in ("n1", "n2", "n3"):
                await procs.start(node, "node_agent", *node_flags(names, node))
            for name in ("cm-a", "cm-b"):
                await procs.start(name, "controller_manager", *controller_manager_flags(names))
            await procs.start("sched", "scheduler", *election_flags(names))
            leader, _ = await procs.wait_for(
                lambda p, e: p.name.startswith("cm") and e["event"] == "controller_synced"
            )
            store, writer = Store(client, names.prefix), DirectWriter(client)
            await store.create(writer, "deployments", deployment())
            await history.wait_until(available_v1)

            mark = procs.marks()
            judge.update_revision = await update_template(store, writer)
            # Midway: the leader has just made the new ReplicaSet.
            await procs.wait_for(
                lambda p, e: p is leader and e["event"] == "replicaset_created", after=mark
            )
            killed_at = procs.kill(leader.name)
            successor, _ = await procs.wait_for(
                lambda p, e: p is not leader and e["event"] == "started_leading", after=mark
            )
            await history.wait_until(rolled_out, timeout=120)
            took = time.monotonic() - killed_at
            # The new leader finished the rollout: it scaled the ReplicaSets after the kill.
            scaled = [
                e
                for e in successor.events[mark[successor.name] :]
                if e["event"] == "replicaset_scaled"
            ]
            assert scaled, "the new leader scaled nothing"
            assert {e["replicaset"] for e in scaled} >= {
                rs["metadata"]["name"] for rs in history.of("replicasets").values()
            }
            least = judge.assert_bounds()
            print(
                f"controller-manager leader killed midway; {successor.name} scaled "
                f"{len(scaled)} times and finished {took:.1f}s after the kill; at least "
                f"{least} pods available"
            )
        finally:
            await procs.close()
            tasks.cancel_scope.cancel()

"""Two controller-manager and two scheduler replicas; their leaders are SIGKILLed mid-work.

Judged from the store history, replayed revision by revision: the ReplicaSet
never has more live pods than replicas, every pod is bound once and never
moved, and every pod a controller-manager created was written while that
process's fencing token was the current one.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import anyio
import anyio.abc

from controllers.store import DirectWriter, Store
from election import fence_key
from kvstore._pb.mvccpb import kv_pb2
from kvstore.client import Client
from kvstore.local.etcd import EtcdCluster
from tests.controllers.harness import History, Processes
from tests.controllers.scenario import (
    LEASE,
    RETRY,
    Names,
    controller_manager_flags,
    election_flags,
    node_flags,
    replicaset,
    running_pods,
)

SLACK = 1.5  # a loaded 2-core machine: process scheduling, etcd fsync


async def _watch_fence(
    client: Client,
    key: str,
    start: int,
    changes: list[tuple[int, str]],
    *,
    task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    async with client.watch(key, start_revision=start) as watch:
        task_status.started()
        async for batch in watch:
            for event in batch.events:
                holder = "" if event.type == kv_pb2.Event.DELETE else event.kv.value.decode()
                changes.append((event.kv.mod_revision, holder))


def _holder_at(changes: list[tuple[int, str]], revision: int) -> str:
    holder = ""
    for changed, value in changes:
        if changed >= revision:
            break
        holder = value
    return holder


async def test_controller_and_scheduler_failover(etcd: EtcdCluster, tmp_path: Path) -> None:
    names = Names.fresh()
    replicas = 8
    async with Client(etcd.endpoints) as client, anyio.create_task_group() as tasks:
        start = (await client.get(names.prefix)).header.revision + 1
        history = History(client, names.prefix, start)
        wanted = {"replicas": replicas}
        violations: list[str] = []
        bindings: dict[str, str] = {}
        peak = {"pods": 0}

        def check(h: History, revision: int) -> None:
            pods = h.of("pods")
            peak["pods"] = max(peak["pods"], len(pods))
            if len(pods) > wanted["replicas"]:
                violations.append(f"{len(pods)} pods at revision {revision}")
            for key, pod in pods.items():
                node = pod["spec"].get("nodeName")
                if node and bindings.setdefault(key, node) != node:
                    violations.append(f"{key} moved from {bindings[key]} to {node}")

        history.checks.append(check)
        await tasks.start(history.run)
        fence_changes: list[tuple[int, str]] = []
        cm_fence = fence_key(names.lock_namespace, "kube-controller-manager")
        await tasks.start(_watch_fence, client, cm_fence, start, fence_changes)

        procs = Processes(tasks, etcd.endpoints, tmp_path)
        try:
            for node in ("n1", "n2"):
                await procs.start(node, "node_agent", *node_flags(names, node))
            cm_flags = controller_manager_flags(names)
            for name in ("cm-a", "cm-b"):
                await procs.start(name, "controller_manager", *cm_flags)
            for name in ("sched-a", "sched-b"):
                await procs.start(name, "scheduler", *election_flags(names))
            cm_leader, _ = await procs.wait_for(
                lambda p, e: p.name.startswith("cm") and e["event"] == "controller_synced"
            )
            sched_leader, _ = await procs.wait_for(
                lambda p, e: p.name.startswith("sched") and e["event"] == "controller_synced"
            )
            store = Store(client, names.prefix)
            writer = DirectWriter(client)
            await store.create(writer, "replicasets", replicaset("web", replicas))

            # Kill both leaders mid-work: after their first pod created / bound.
            await procs.wait_for(lambda p, e: p is cm_leader and e["event"] == "pod_created")
            mark = procs.marks()
            cm_killed = procs.kill(cm_leader.name)
            await procs.wait_for(lambda p, e: p is sched_leader and e["event"] == "pod_bound")
            sched_killed = procs.kill(sched_leader.name)

            cm_next, cm_started = await procs.wait_for(
                lambda p, e: p.name.startswith("cm") and e["event"] == "started_leading", after=mark
            )
            _, sched_started = await procs.wait_for(
                lambda p, e: p.name.startswith("sched") and e["event"] == "started_leading",
                after=mark,
            )
            cm_takeover = cm_started["t"] - cm_killed
            sched_takeover = sched_started["t"] - sched_killed
            assert cm_takeover <= LEASE + RETRY + SLACK, cm_takeover
            assert sched_takeover <= LEASE + RETRY + SLACK, sched_takeover
            await history.wait_until(lambda h: len(running_pods(h)) == replicas)
            print(
                f"controller-manager takeover {cm_takeover:.2f}s, "
                f"scheduler takeover {sched_takeover:.2f}s, "
                f"{replicas} running {time.monotonic() - cm_killed:.1f}s after the kill"
            )

            # A second round: a fresh standby joins, the ReplicaSet is scaled up,
            # and the new controller-manager leader is killed mid-work too.
            await procs.start("cm-c", "controller_manager", *cm_flags)
            replicas = wanted["replicas"] = 14
            mark = procs.marks()
            await store.modify(
                writer, "replicasets", "web", "default", lambda o: o["spec"].update(replicas=14)
            )
            await procs.wait_for(
                lambda p, e: p is cm_next and e["event"] == "pod_created", after=mark
            )
            cm_killed = procs.kill(cm_next.name)
            _, started = await procs.wait_for(
                lambda p, e: (
                    p.name.startswith("cm") and p is not cm_next and e["event"] == "started_leading"
                ),
                after=mark,
            )
            await history.wait_until(lambda h: len(running_pods(h)) == replicas)
            print(f"second controller-manager takeover {started['t'] - cm_killed:.2f}s")

            assert not violations, violations[:5]
            assert peak["pods"] == replicas
            assert len(bindings) == len(history.of("pods")) == replicas

            # No pod was bound twice across both schedulers (a killed leader may have
            # bound a pod without living to report it: the store history is the truth).
            bound = [
                e["pod"]
                for p in procs.procs.values()
                for e in p.events
                if e["event"] == "pod_bound"
            ]
            assert len(bound) == len(set(bound)), bound
            assert set(bound) <= set(bindings)

            # Fencing, judged from the store: each pod a controller-manager created
            # was written while that process held the current fencing token.
            identities = {
                p.name: e["identity"]
                for p in procs.procs.values()
                for e in p.events
                if e["event"] == "started_leading"
            }
            for proc in procs.procs.values():
                for event in proc.events:
                    if event["event"] == "pod_created":
                        holder = _holder_at(fence_changes, event["revision"])
                        assert holder == identities[proc.name], (proc.name, event)
        finally:
            await procs.close()
            tasks.cancel_scope.cancel()


async def test_paused_leader_is_deposed_and_fenced(etcd: EtcdCluster, tmp_path: Path) -> None:
    """SIGSTOP the controller-manager leader mid-work; a standby takes over; on SIGCONT
    the old leader stops its controllers and rejoins as a standby, and nothing it
    writes after being deposed is applied."""
    names = Names.fresh()
    replicas = 10
    async with Client(etcd.endpoints) as client, anyio.create_task_group() as tasks:
        start = (await client.get(names.prefix)).header.revision + 1
        history = History(client, names.prefix, start)
        peak = {"pods": 0}
        history.checks.append(
            lambda h, revision: peak.update(pods=max(peak["pods"], len(h.of("pods"))))
        )
        await tasks.start(history.run)
        fence_changes: list[tuple[int, str]] = []
        cm_fence = fence_key(names.lock_namespace, "kube-controller-manager")
        await tasks.start(_watch_fence, client, cm_fence, start, fence_changes)
        procs = Processes(tasks, etcd.endpoints, tmp_path)
        try:
            await procs.start("n1", "node_agent", *node_flags(names, "n1"))
            for name in ("cm-a", "cm-b"):
                await procs.start(name, "controller_manager", *controller_manager_flags(names))
            await procs.start("sched", "scheduler", *election_flags(names))
            old, _ = await procs.wait_for(
                lambda p, e: p.name.startswith("cm") and e["event"] == "controller_synced"
            )
            await Store(client, names.prefix).create(
                DirectWriter(client), "replicasets", replicaset("web", replicas)
            )
            await procs.wait_for(lambda p, e: p is old and e["event"] == "pod_created")
            mark = procs.marks()
            old.process.send_signal(signal.SIGSTOP)
            paused_at = time.monotonic()
            new, started = await procs.wait_for(
                lambda p, e: (
                    p.name.startswith("cm") and p is not old and e["event"] == "started_leading"
                ),
                after=mark,
            )
            await history.wait_until(lambda h: len(running_pods(h)) == replicas)
            old.process.send_signal(signal.SIGCONT)
            _, stopped = await procs.wait_for(
                lambda p, e: p is old and e["event"] == "controllers_stopped", after=mark
            )
            await procs.wait_for(
                lambda p, e: p is old and e["event"] == "stopped_leading", after=mark
            )
            await procs.wait_for(lambda p, e: p is old and e["event"] == "standby", after=mark)
            # Controllers stop before the process reports the end of its tenure.
            events = [e["event"] for e in old.events[mark[old.name] :]]
            assert events.index("controllers_stopped") < events.index("stopped_leading")
            print(
                f"paused leader replaced after {started['t'] - paused_at:.2f}s; "
                f"it stopped its controllers {stopped['t'] - paused_at:.2f}s after the pause"
            )
            assert peak["pods"] == replicas
            identities = {
                p.name: e["identity"]
                for p in (old, new)
                for e in p.events
                if e["event"] == "started_leading"
            }
            for proc in (old, new):
                for event in proc.events:
                    if event["event"] == "pod_created":
                        assert _holder_at(fence_changes, event["revision"]) == identities[proc.name]
        finally:
            for proc in procs.procs.values():
                if proc.alive:
                    proc.process.send_signal(signal.SIGCONT)
            await procs.close()
            tasks.cancel_scope.cancel()

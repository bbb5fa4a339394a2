"""A ReplicaSet spread over three nodes by the scheduler; one node agent dies;
its pods are evicted and recreated on the healthy nodes."""

from __future__ import annotations

import time
from pathlib import Path

import anyio

from controllers.store import DirectWriter, Store
from kvstore.client import Client
from kvstore.local.etcd import EtcdCluster
from tests.controllers.harness import History, Processes
from tests.controllers.scenario import (
    Names,
    controller_manager_flags,
    election_flags,
    node_flags,
    pods_per_node,
    replicaset,
    running_pods,
)

REPLICAS = 6


async def test_node_failure_moves_pods(etcd: EtcdCluster, tmp_path: Path) -> None:
    names = Names.fresh()
    async with Client(etcd.endpoints) as client, anyio.create_task_group() as tasks:
        start = (await client.get(names.prefix)).header.revision + 1
        history = History(client, names.prefix, start)
        peak = {"pods": 0}

        def count_pods(h: History, revision: int) -> None:
            peak["pods"] = max(peak["pods"], len(h.of("pods")))

        history.checks.append(count_pods)
        await tasks.start(history.run)
        procs = Processes(tasks, etcd.endpoints, tmp_path)
        try:
            for node in ("n1", "n2", "n3"):
                await procs.start(node, "node_agent", *node_flags(names, node))
            await procs.start("cm", "controller_manager", *controller_manager_flags(names))
            await procs.start("sched", "scheduler", *election_flags(names))
            store = Store(client, names.prefix)
            await store.create(DirectWriter(client), "replicasets", replicaset("web", REPLICAS))

            # The scheduler spreads the pods (least-requested): every node gets some.
            await history.wait_until(lambda h: len(running_pods(h)) == REPLICAS)
            spread = pods_per_node(running_pods(history))
            assert set(spread) == {"n1", "n2", "n3"}, spread
            assert peak["pods"] == REPLICAS

            victim = max(spread, key=lambda n: spread[n])
            on_victim = {
                k for k, p in running_pods(history).items() if p["spec"]["nodeName"] == victim
            }
            mark = procs.marks()
            killed_at = procs.kill(victim)

            _, not_ready = await procs.wait_for(
                lambda p, e: e["event"] == "node_not_ready" and e["node"] == victim, after=mark
            )
            await history.wait_until(
                lambda h: not (on_victim & set(h.of("pods")))  # all evicted
            )
            evicted_at = time.monotonic()
            await history.wait_until(
                lambda h: (
                    len(running_pods(h)) == REPLICAS
                    and victim not in pods_per_node(running_pods(h))
                )
            )
            recovered_at = time.monotonic()
            victim_node = history.of("nodes")[victim]
            ready = next(c for c in victim_node["status"]["conditions"] if c["type"] == "Ready")
            assert ready["status"] == "Unknown"
            assert peak["pods"] <= REPLICAS
            # Grace period 3 s from the last renewal seen (renewals every 0.5 s),
            # eviction timeout 3 s after that (monitor period 0.5 s).
            not_ready_after = not_ready["t"] - killed_at
            assert 2.0 <= not_ready_after <= 15, not_ready_after
            assert evicted_at - not_ready["t"] >= 2.5
            # The node comes back: its agent reports Ready again, the controller
            # lifts the unreachable taint, and the scheduler may use it again.
            mark = procs.marks()
            await procs.start(f"{victim}-again", "node_agent", *node_flags(names, victim))
            await procs.wait_for(
                lambda p, e: e["event"] == "node_ready" and e["node"] == victim, after=mark
            )
            await history.wait_until(
                lambda h: (
                    not h.of("nodes")[victim]["spec"].get("taints")
                    and any(
                        c["type"] == "Ready" and c["status"] == "True"
                        for c in h.of("nodes")[victim]["status"]["conditions"]
                    )
                )
            )
            print(
                f"node {victim} killed: NotReady after {not_ready_after:.1f}s, "
                f"evicted after {evicted_at - killed_at:.1f}s, "
                f"{REPLICAS} running again after {recovered_at - killed_at:.1f}s"
            )
        finally:
            await procs.close()
            tasks.cancel_scope.cancel()

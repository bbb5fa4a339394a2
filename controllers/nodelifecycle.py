"""The node lifecycle controller: node health from heartbeats.

Every ``node_monitor_period`` it looks at each node's heartbeat Lease
(``kube-node-lease/<node>``, renewed by the node agent). Health is judged
only by this process's own observations, never by timestamps written by
others: the moment (local monotonic clock) it last *saw the lease change*
(its resourceVersion move). When that is more than ``grace_period`` ago, the
node's Ready condition becomes Unknown and the node is tainted
``node.kubernetes.io/unreachable`` with effects NoSchedule (the scheduler
keeps new pods off it) and NoExecute (the taint-eviction controller deletes
its pods once their toleration for it runs out, so their ReplicaSets
recreate them elsewhere). When the heartbeat moves again and the node
reports Ready, both taints are removed.

A new leader starts every node's clock at its first observation, so a
failover can only delay, never hasten, marking a node unreachable.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass

import anyio

from controllers.events import emit
from controllers.informer import Informers, wait_synced
from controllers.objects import (
    NODE_LEASE_NAMESPACE,
    Obj,
    condition,
    name_of,
    node_ready,
    resource_version,
    set_condition,
)
from controllers.store import ConflictError, Store, Writer
from kvstore.client import EtcdError

log = logging.getLogger(__name__)

UNREACHABLE_TAINT = "node.kubernetes.io/unreachable"
UNREACHABLE_TAINTS = [
    {"key": UNREACHABLE_TAINT, "effect": "NoSchedule"},
    {"key": UNREACHABLE_TAINT, "effect": "NoExecute"},
]


@dataclass
class NodeHealth:
    lease_version: int  # the lease resourceVersion last seen (0: no lease)
    probe_at: float  # local monotonic time that version was first seen


class NodeLifecycleController:
    def __init__(
        self,
        store: Store,
        writer: Writer,
        informers: Informers,
        *,
        monitor_period: float = 5.0,
        grace_period: float = 40.0,
    ) -> None:
        self.store = store
        self.writer = writer
        self.monitor_period = monitor_period
        self.grace_period = grace_period
        self.nodes = informers.get("nodes")
        self.leases = informers.get("leases", NODE_LEASE_NAMESPACE)
        self.health: dict[str, NodeHealth] = {}

    async def run(self) -> None:
        await wait_synced(self.nodes, self.leases)
        emit("controller_synced", controller="nodelifecycle")
        while True:
            try:
                await self.monitor_once()
            except (ConflictError, EtcdError) as error:
                log.info("node monitor: %s; next period retries", error)
            await anyio.sleep(self.monitor_period)  # the monitor's period

    def _observe(self, name: str, now: float) -> NodeHealth:
        lease = self.leases.get(f"{NODE_LEASE_NAMESPACE}/{name}")
        version = resource_version(lease) if lease is not None else 0
        health = self.health.get(name)
        if health is None:
            health = self.health[name] = NodeHealth(version, now)
        elif version != health.lease_version:
            health.lease_version, health.probe_at = version, now
        return health

    async def monitor_once(self) -> None:
        now = anyio.current_time()
        names = set()
        for node in self.nodes.list():
            name = name_of(node)
            names.add(name)
            health = self._observe(name, now)
            stale = now - health.probe_at > self.grace_period
            ready = condition(node, "Ready")
            if stale and (ready is None or ready.get("status") != "Unknown"):
                await self._mark_unknown(node, now - health.probe_at)
            elif not stale and node_ready(node) and _has_taint(node, UNREACHABLE_TAINT):
                await self._untaint(node)
        for gone in set(self.health) - names:
            del self.health[gone]

    async def _mark_unknown(self, node: Obj, silent_for: float) -> Obj:
        updated = copy.deepcopy(node)
        set_condition(
            updated,
            "Ready",
            "Unknown",
            "NodeStatusUnknown",
            "Kubelet stopped posting node status.",
        )
        taints = updated["spec"].setdefault("taints", [])
        for taint in UNREACHABLE_TAINTS:
            if not any(
                t.get("key") == taint["key"] and t.get("effect") == taint["effect"] for t in taints
            ):
                taints.append(dict(taint))
        written = await self.store.update(self.writer, "nodes", updated)
        emit("node_not_ready", node=name_of(node), silent_for=round(silent_for, 3))
        return written

    async def _untaint(self, node: Obj) -> Obj:
        updated = copy.deepcopy(node)
        updated["spec"]["taints"] = [
            t for t in updated["spec"].get("taints") or [] if t.get("key") != UNREACHABLE_TAINT
        ]
        written = await self.store.update(self.writer, "nodes", updated)
        emit("node_ready", node=name_of(node))
        return written


def _has_taint(node: Obj, key: str) -> bool:
    return any(t.get("key") == key for t in (node.get("spec") or {}).get("taints") or [])

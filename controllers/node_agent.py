"""``node-agent``: a simulated kubelet.

It registers a Node with the capacity given by flags (Ready=True), renews
its heartbeat Lease ``kube-node-lease/<node>`` every
``--lease-renew-interval``, sets its node Ready again if a controller marked
it Unknown while it was alive, and marks pods bound to it Running. It is not
leader-elected: its writes are optimistic (compare the resourceVersion) but
unfenced. Killing it is how a node fails.

Events (JSON lines on stdout): ready, node_registered, lease_renewed (first
only), node_ready_again, pod_running, exit.
"""

from __future__ import annotations

import argparse
import copy
import logging
import socket

import anyio

from controllers.events import emit, set_component
from controllers.informer import Handlers, Informer
from controllers.objects import (
    NODE_LEASE_NAMESPACE,
    Obj,
    new_object,
    node_ready,
    now_rfc3339,
    object_key,
    pod_is_active,
    set_condition,
)
from controllers.runtime import add_store_flags, duration, run_workers, serve, setup_logging
from controllers.store import ConflictError, DirectWriter, Store
from controllers.workqueue import ExponentialBackoff, WorkQueue
from kvstore import eventloop
from kvstore.client import Client, EtcdError

log = logging.getLogger(__name__)


def _pairs(text: str) -> dict[str, str]:
    result = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        key, _, value = item.partition("=")
        result[key] = value
    return result


def _taints(text: str) -> list[dict[str, str]]:
    """``key=value:Effect,...`` as kubelet's --register-with-taints."""
    taints = []
    for item in filter(None, (s.strip() for s in text.split(","))):
        head, _, effect = item.rpartition(":")
        key, _, value = head.partition("=")
        taint = {"key": key, "effect": effect}
        if value:
            taint["value"] = value
        taints.append(taint)
    return taints


class NodeAgent:
    def __init__(self, store: Store, args: argparse.Namespace) -> None:
        self.store = store
        self.writer = DirectWriter(store.client)
        self.args = args
        self.name: str = args.node_name
        self.pods = Informer(store, "pods")
        self.queue: WorkQueue[str] = WorkQueue(ExponentialBackoff(0.05, 5.0))
        self.pods.add_handlers(
            Handlers(on_add=self._pod_changed, on_update=lambda old, new: self._pod_changed(new))
        )
        self._renewed_once = False

    def _pod_changed(self, pod: Obj) -> None:
        spec, status = pod.get("spec") or {}, pod.get("status") or {}
        mine = spec.get("nodeName") == self.name and pod_is_active(pod)
        if mine and status.get("phase") != "Running":
            self.queue.add(object_key(pod))

    def _node_object(self) -> Obj:
        capacity = {"cpu": self.args.cpu, "memory": self.args.memory, "pods": str(self.args.pods)}
        labels = {"kubernetes.io/hostname": self.name, **_pairs(self.args.node_labels)}
        node = new_object(
            "nodes",
            self.name,
            labels=labels,
            spec={"taints": _taints(self.args.register_with_taints)},
            status={"capacity": capacity, "allocatable": dict(capacity)},
        )
        set_condition(node, "Ready", "True", "KubeletReady", "node agent is posting ready status")
        return node

    async def register(self) -> None:
        while True:
            existing = await self.store.get("nodes", self.name)
            try:
                if existing is None:
                    await self.store.create(self.writer, "nodes", self._node_object())
                else:
                    fresh = self._node_object()
                    updated = copy.deepcopy(existing)
                    updated["metadata"]["labels"] = fresh["metadata"]["labels"]
                    # Taints are left alone: --register-with-taints applies only on
                    # creation, and others (unreachable) belong to the controllers.
                    updated.setdefault("status", {}).update(
                        capacity=fresh["status"]["capacity"],
                        allocatable=fresh["status"]["allocatable"],
                    )
                    set_condition(updated, "Ready", "True", "KubeletReady", "node agent restarted")
                    await self.store.update(self.writer, "nodes", updated)
                emit("node_registered", node=self.name)
                return
            except ConflictError:
                continue

    async def renew_once(self) -> None:
        lease = await self.store.get("leases", self.name, NODE_LEASE_NAMESPACE)
        if lease is None:
            lease = new_object("leases", self.name, NODE_LEASE_NAMESPACE)
            lease["spec"] = self._lease_spec()
            await self.store.create(self.writer, "leases", lease)
        else:
            lease = copy.deepcopy(lease)
            lease["spec"] = self._lease_spec()
            await self.store.update(self.writer, "leases", lease)
        if not self._renewed_once:
            self._renewed_once = True
            emit("lease_renewed", node=self.name)
        node = await self.store.get("nodes", self.name)
        if node is not None and not node_ready(node):
            node = copy.deepcopy(node)
            set_condition(node, "Ready", "True", "KubeletReady", "node agent is posting again")
            await self.store.update(self.writer, "nodes", node)
            emit("node_ready_again", node=self.name)

    def _lease_spec(self) -> dict[str, object]:
        return {
            "holderIdentity": self.name,
            "leaseDurationSeconds": self.args.node_lease_duration_seconds,
            "renewTime": now_rfc3339(),
        }

    async def heartbeat(self) -> None:
        while True:
            try:
                await self.renew_once()
            except (ConflictError, EtcdError) as error:
                log.info("%s: lease renewal failed: %s", self.name, error)
            await anyio.sleep(self.args.lease_renew_interval)  # the heartbeat's period

    async def start_pod(self, key: str) -> None:
        pod = self.pods.get(key)
        if pod is None or (pod.get("spec") or {}).get("nodeName") != self.name:
            return
        if not pod_is_active(pod) or (pod.get("status") or {}).get("phase") == "Running":
            return
        running = copy.deepcopy(pod)
        status = running.setdefault("status", {})
        status.update(phase="Running", hostIP="127.0.0.1", startTime=now_rfc3339())
        set_condition(running, "Ready", "True", "ContainersReady")
        await self.store.update(self.writer, "pods", running)
        emit("pod_running", pod=key, node=self.name)

    async def run(self) -> None:
        await self.register()
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(self.heartbeat)
            tasks.start_soon(self.pods.run)
            await run_workers(f"node-agent {self.name}", self.queue, self.start_pod, 2)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="node-agent", description=__doc__.split("\n")[0])
    add_store_flags(parser)
    parser.add_argument("--node-name", default=socket.gethostname())
    parser.add_argument("--cpu", default="4", help="cpu capacity (a quantity: 4, 3500m)")
    parser.add_argument("--memory", default="8Gi", help="memory capacity (a quantity: 8Gi)")
    parser.add_argument("--pods", type=int, default=110, help="most pods on this node")
    parser.add_argument("--node-labels", default="", help="k=v,... added to the node's labels")
    parser.add_argument("--register-with-taints", default="", help="key=value:Effect,...")
    parser.add_argument("--node-lease-duration-seconds", type=int, default=40)
    parser.add_argument(
        "--lease-renew-interval",
        type=duration,
        default=10.0,
        help="how often the heartbeat lease is renewed (kubelet: a quarter of the duration)",
    )
    parser.add_argument("-v", "--verbose", action="store_true")
    return parser.parse_args(argv)


async def amain(args: argparse.Namespace) -> None:
    async def body(client: Client) -> None:
        await NodeAgent(Store(client, args.etcd_prefix), args).run()

    await serve(args, body)


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    setup_logging(args.verbose)
    set_component("node-agent")
    eventloop.run(amain, args)


if __name__ == "__main__":
    main()

"""``scheduler``: binds pending pods to nodes, leader-elected on the kube-scheduler lock.

A pod is pending while ``spec.nodeName`` is empty (and its ``schedulerName``
is ours, ``default-scheduler``). The algorithm is :mod:`controllers.scheduling`.
Binding is an optimistic update of the pod (``spec.nodeName`` plus a
PodScheduled condition) compared on the resourceVersion the decision was
made from, written through the leadership (fenced): a pod is bound at most
once, even across failovers. Bound-but-not-yet-observed pods are *assumed*
on their node so that back-to-back decisions account for each other (their
requests, and their affinity terms).

A pod no node fits gets the condition PodScheduled=False, reason
Unschedulable, with kube-scheduler's message ("0/3 nodes are available:
..."); it is retried with backoff, and at once when a node changes or a pod
is deleted or bound (which may free room or satisfy an affinity term).

Flags: kube-scheduler's leader-election flags, plus --endpoints and
--etcd-prefix. Events (JSON lines on stdout): ready, standby, new_leader,
started_leading, controller_synced, pod_bound, pod_unschedulable (once per
spell), controllers_stopped, stopped_leading, exit.
"""

from __future__ import annotations

import argparse
import copy
import logging
import random

import anyio

from controllers.events import emit, set_component
from controllers.informer import Handlers, Informer, wait_synced
from controllers.objects import Obj, now_rfc3339, object_key, pod_is_active
from controllers.runtime import (
    Retry,
    add_leader_election_flags,
    add_store_flags,
    run_leader_elected,
    run_workers,
    serve,
    setup_logging,
    validate_leader_election,
)
from controllers.scheduling import schedule, snapshot
from controllers.store import Store, Writer
from controllers.workqueue import ExponentialBackoff, WorkQueue
from kvstore import eventloop
from kvstore.client import Client

log = logging.getLogger(__name__)


class Unschedulable(Retry):
    """No node fits the pod now; it is retried with backoff and on node changes."""


SCHEDULER_NAME = "default-scheduler"


def _pending(pod: Obj) -> bool:
    spec = pod.get("spec") or {}
    ours = spec.get("schedulerName", SCHEDULER_NAME) == SCHEDULER_NAME
    return ours and pod_is_active(pod) and not spec.get("nodeName")


def set_pod_condition(
    pod: Obj, kind: str, status: str, reason: str = "", message: str = ""
) -> bool:
    """Set a pod condition (pods' conditions carry lastProbeTime, not heartbeats);
    True if anything but the timestamps changed."""
    conditions = pod.setdefault("status", {}).setdefault("conditions", [])
    wanted = {"type": kind, "status": status, "reason": reason, "message": message}
    for cond in conditions:
        if cond.get("type") == kind:
            if all(cond.get(k, "") == v for k, v in wanted.items()):
                return False
            if cond.get("status") != status:
                cond["lastTransitionTime"] = now_rfc3339()
            cond.update(wanted, lastProbeTime=None)
            return True
    conditions.append({**wanted, "lastProbeTime": None, "lastTransitionTime": now_rfc3339()})
    return True


class Scheduler:
    def __init__(self, store: Store, writer: Writer, *, workers: int = 1) -> None:
        self.store = store
        self.writer = writer
        self.workers = workers
        self.rng = random.Random()
        self.pods = Informer(store, "pods")
        self.nodes = Informer(store, "nodes")
        self.queue: WorkQueue[str] = WorkQueue(ExponentialBackoff(0.1, 5.0))
        self.assumed: dict[str, Obj] = {}  # pod key -> the pod as bound, until observed
        self.unschedulable: set[str] = set()  # pods that fitted nowhere at their last try
        self.pods.add_handlers(
            Handlers(
                on_add=lambda pod: self._pod_changed(None, pod),
                on_update=self._pod_changed,
                on_delete=self._pod_deleted,
            )
        )
        self.nodes.add_handlers(
            Handlers(
                on_add=lambda node: self._requeue_pending(),
                on_update=lambda old, new: self._requeue_pending(),
            )
        )

    def _pod_changed(self, old: Obj | None, pod: Obj) -> None:
        key = object_key(pod)
        if _pending(pod):
            self.queue.add(key)
            return
        self.unschedulable.discard(key)
        newly_bound = old is None or not (old.get("spec") or {}).get("nodeName")
        if self.assumed.pop(key, None) is None and newly_bound and pod_is_active(pod):
            self._requeue_unschedulable()  # bound by someone else: affinity may now hold

    def _pod_deleted(self, pod: Obj) -> None:
        key = object_key(pod)
        self.assumed.pop(key, None)
        self.unschedulable.discard(key)
        self._requeue_unschedulable()

    def _requeue_unschedulable(self) -> None:
        for key in self.unschedulable:
            self.queue.add(key)

    def _requeue_pending(self) -> None:
        for pod in self.pods.list():
            if _pending(pod):
                self.queue.add(object_key(pod))

    async def run(self) -> None:
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(self.pods.run)
            tasks.start_soon(self.nodes.run)
            await wait_synced(self.pods, self.nodes)
            emit("controller_synced", controller="scheduler")
            await run_workers("scheduler", self.queue, self.sync, self.workers)

    async def sync(self, key: str) -> None:
        pod = self.pods.get(key)
        if pod is None or not _pending(pod) or key in self.assumed:
            self.unschedulable.discard(key)
            return
        placed = [p for p in self.pods.list() if p["spec"].get("nodeName")]
        placed_keys = {object_key(p) for p in placed}
        placed += [p for k, p in self.assumed.items() if k not in placed_keys]
        decision = schedule(pod, snapshot(self.nodes.list(), placed), self.rng)
        if decision.node is None:
            await self._unschedulable(key, pod, decision.message)
            raise Unschedulable(f"{key}: {decision.message}")
        self.unschedulable.discard(key)
        binding = copy.deepcopy(pod)
        binding["spec"]["nodeName"] = decision.node
        set_pod_condition(binding, "PodScheduled", "True")
        written = await self.store.update(self.writer, "pods", binding)
        self.assumed[key] = written
        emit(
            "pod_bound",
            pod=key,
            node=decision.node,
            revision=int(written["metadata"]["resourceVersion"]),
            score=decision.scores[decision.node],
        )
        self._requeue_unschedulable()  # an affinity term may hold now

    async def _unschedulable(self, key: str, pod: Obj, message: str) -> None:
        """Record why on the pod (as kube-scheduler's PodScheduled condition), once per message."""
        if key not in self.unschedulable:
            emit("pod_unschedulable", pod=key, message=message)
        self.unschedulable.add(key)
        updated = copy.deepcopy(pod)
        if set_pod_condition(updated, "PodScheduled", "False", "Unschedulable", message):
            await self.store.update(self.writer, "pods", updated)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="scheduler", description=__doc__.split("\n")[0])
    add_store_flags(parser)
    add_leader_election_flags(parser, "kube-scheduler")
    parser.add_argument("--workers", type=int, default=1, help="concurrent bindings")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    validate_leader_election(parser, args)
    return args


async def amain(args: argparse.Namespace) -> None:
    async def body(client: Client) -> None:
        store = Store(client, args.etcd_prefix)

        async def lead(writer: Writer) -> None:
            await Scheduler(store, writer, workers=args.workers).run()

        await run_leader_elected(client, args, lead)

    await serve(args, body)


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    setup_logging(args.verbose)
    set_component("scheduler")
    eventloop.run(amain, args)


if __name__ == "__main__":
    main()

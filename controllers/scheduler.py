"""``scheduler``: binds pending pods to nodes, leader-elected on the kube-scheduler lock.

A pod is pending while ``spec.nodeName`` is empty. Binding is an optimistic
update of the pod (``spec.nodeName`` plus a PodScheduled condition) compared
on the resourceVersion the decision was made from, written through the
leadership (fenced): a pod is bound at most once, even across failovers.
Bound-but-not-yet-observed pods are *assumed* on their node so that
back-to-back decisions account for each other's requests.

Flags: kube-scheduler's leader-election flags, plus --endpoints and
--etcd-prefix. Events (JSON lines on stdout): ready, standby, new_leader,
started_leading, controller_synced, pod_bound, pod_unschedulable,
controllers_stopped, stopped_leading, exit.
"""

from __future__ import annotations

import argparse
import copy
import logging
import random

import anyio

from controllers.events import emit, set_component
from controllers.informer import Handlers, Informer, wait_synced
from controllers.objects import Obj, object_key, pod_is_active, set_condition
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
from controllers.scheduling import schedule
from controllers.store import Store, Writer
from controllers.workqueue import ExponentialBackoff, WorkQueue
from kvstore import eventloop
from kvstore.client import Client

log = logging.getLogger(__name__)


class Unschedulable(Retry):
    """No node fits the pod now; it is retried with backoff and on node changes."""


def _pending(pod: Obj) -> bool:
    return pod_is_active(pod) and not (pod.get("spec") or {}).get("nodeName")


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
        self.pods.add_handlers(
            Handlers(
                on_add=self._pod_changed,
                on_update=lambda old, new: self._pod_changed(new),
                on_delete=self._pod_deleted,
            )
        )
        self.nodes.add_handlers(
            Handlers(
                on_add=lambda node: self._requeue_pending(),
                on_update=lambda old, new: self._requeue_pending(),
            )
        )

    def _pod_changed(self, pod: Obj) -> None:
        key = object_key(pod)
        if _pending(pod):
            self.queue.add(key)
        else:
            self.assumed.pop(key, None)

    def _pod_deleted(self, pod: Obj) -> None:
        self.assumed.pop(object_key(pod), None)

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
            return
        bound = [p for p in self.pods.list() if pod_is_active(p) and p["spec"].get("nodeName")]
        bound_keys = {object_key(p) for p in bound}
        bound += [p for k, p in self.assumed.items() if k not in bound_keys]
        decision = schedule(pod, self.nodes.list(), bound, self.rng)
        if decision.node is None:
            emit("pod_unschedulable", pod=key, reasons=decision.reasons)
            raise Unschedulable(f"{key}: no node fits: {decision.reasons}")
        binding = copy.deepcopy(pod)
        binding["spec"]["nodeName"] = decision.node
        set_condition(binding, "PodScheduled", "True", "Scheduled")
        written = await self.store.update(self.writer, "pods", binding)
        self.assumed[key] = written
        emit(
            "pod_bound",
            pod=key,
            node=decision.node,
            revision=int(written["metadata"]["resourceVersion"]),
            score=round(decision.scores[decision.node], 2),
        )


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

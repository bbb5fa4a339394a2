"""The control plane in this process, for tests that drive it object by object:
the real controllers, scheduler and node agents on one event loop (unfenced
writes), each as the processes run them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import anyio
import anyio.abc

from controllers import node_agent
from controllers.deployment import DeploymentController
from controllers.informer import Informer, Informers
from controllers.objects import Obj
from controllers.replicaset import ReplicaSetController
from controllers.scheduler import Scheduler
from controllers.store import DirectWriter, Store
from controllers.tainteviction import TaintEvictionController
from kvstore.client import Client

TIMEOUT = 60.0  # generous: the machine is shared and noisy


@dataclass
class Plane:
    store: Store
    writer: DirectWriter
    informers: Informers
    tasks: anyio.abc.TaskGroup
    agents: dict[str, anyio.CancelScope] = field(default_factory=dict)

    def informer(self, resource: str) -> Informer:
        return self.informers.get(resource)

    async def add_node(self, name: str, *flags: str) -> None:
        args = node_agent.parse(
            ["--node-name", name, "--lease-renew-interval", "0.5s", "--cpu", "2", *flags]
        )
        agent = node_agent.NodeAgent(self.store, args)
        scope = anyio.CancelScope()
        self.agents[name] = scope

        async def run() -> None:
            with scope:
                await agent.run()

        self.tasks.start_soon(run)

    async def create(self, resource: str, obj: Obj) -> Obj:
        return await self.store.create(self.writer, resource, obj)


def start_plane(
    tasks: anyio.abc.TaskGroup,
    client: Client,
    prefix: str,
    *,
    controllers: tuple[str, ...] = ("replicaset", "deployment"),
    scheduler: bool = True,
    toleration_seconds: float = 300.0,
) -> Plane:
    store = Store(client, prefix)
    writer = DirectWriter(client)
    informers = Informers(store, resync_period=5.0)
    plane = Plane(store, writer, informers, tasks)
    # The observers tests wait on, taken before the informers start.
    for resource in ("pods", "nodes", "replicasets", "deployments"):
        informers.get(resource)
    runners = []
    if "replicaset" in controllers:
        runners.append(ReplicaSetController(store, writer, informers, workers=2).run)
    if "deployment" in controllers:
        runners.append(DeploymentController(store, writer, informers, workers=2).run)
    if "taint-eviction-controller" in controllers:
        eviction = TaintEvictionController(
            store, writer, informers, default_toleration_seconds=toleration_seconds
        )
        runners.append(eviction.run)
    if scheduler:
        runners.append(Scheduler(store, writer).run)
    tasks.start_soon(informers.run)
    for run in runners:
        tasks.start_soon(run)
    return plane


async def settle(
    informer: Informer, predicate: Callable[[list[Obj]], bool], timeout: float = TIMEOUT
) -> list[Obj]:
    """Wait until the informer's cache satisfies ``predicate``; returns the cache then."""
    with anyio.fail_after(timeout):
        while not (informer.synced.is_set() and predicate(informer.list())):
            await informer.wait_changed()
    return informer.list()

"""``controller-manager``: node lifecycle, taint eviction, ReplicaSet and Deployment
controllers, leader-elected.

Only the holder of the lock (``kube-system/kube-controller-manager`` by
default) runs controllers; they are cancelled the moment leadership is lost,
and the process then rejoins as a standby (kube-controller-manager exits
instead and relies on being restarted).

Events (JSON lines on stdout): ready, standby, new_leader, started_leading,
controller_synced, pod_created, pod_deleted, pod_adopted, pod_released,
node_not_ready, node_ready, pod_evicted, replicaset_created,
replicaset_scaled, replicaset_deleted, replicaset_adopted,
replicaset_released, deployment_status, deployment_rolled_back,
deployment_invalid, controllers_stopped, stopped_leading, exit.

The controllers share one informer per resource (pods, nodes, ...), so a
leader lists and watches each resource once.
"""

from __future__ import annotations

import argparse
from typing import Protocol

import anyio

from controllers.deployment import DeploymentController
from controllers.events import emit, set_component
from controllers.informer import Informers
from controllers.nodelifecycle import NodeLifecycleController
from controllers.replicaset import ReplicaSetController
from controllers.runtime import (
    add_leader_election_flags,
    add_store_flags,
    duration,
    run_leader_elected,
    serve,
    setup_logging,
    validate_leader_election,
)
from controllers.store import Store, Writer
from controllers.tainteviction import TaintEvictionController
from kvstore import eventloop
from kvstore.client import Client

KNOWN_CONTROLLERS = ("nodelifecycle", "taint-eviction-controller", "replicaset", "deployment")
DEFAULT_CONTROLLERS = KNOWN_CONTROLLERS


class Controller(Protocol):
    async def run(self) -> None: ...


def enabled_controllers(spec: str) -> list[str]:
    """kube-controller-manager's --controllers: "foo" enables and "-foo" disables one;
    "*" stands for the defaults not named explicitly."""
    items = [s.strip() for s in spec.split(",") if s.strip()]
    for item in items:
        name = item.lstrip("-")
        if name != "*" and name not in KNOWN_CONTROLLERS:
            raise argparse.ArgumentTypeError(f"unknown controller {name!r}")
    chosen = []
    for name in KNOWN_CONTROLLERS:
        by_default = "*" in items and name in DEFAULT_CONTROLLERS
        if name in items or (by_default and f"-{name}" not in items):
            chosen.append(name)
    return chosen


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="controller-manager", description=__doc__.split("\n")[0])
    add_store_flags(parser)
    add_leader_election_flags(parser, "kube-controller-manager")
    parser.add_argument("--node-monitor-period", type=duration, default=5.0)
    parser.add_argument("--node-monitor-grace-period", type=duration, default=40.0)
    parser.add_argument(
        "--pod-eviction-timeout",
        type=duration,
        default=300.0,
        help="how long pods tolerate an unreachable node when they do not say "
        "(kube-apiserver's --default-unreachable-toleration-seconds)",
    )
    parser.add_argument("--concurrent-replicaset-syncs", type=int, default=5)
    parser.add_argument("--concurrent-deployment-syncs", type=int, default=5)
    parser.add_argument(
        "--controllers",
        type=enabled_controllers,
        default=list(DEFAULT_CONTROLLERS),
        help='comma-separated; "*" = all defaults, "-name" disables (default "*")',
    )
    parser.add_argument("--resync-period", type=duration, default=30.0)
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    validate_leader_election(parser, args)
    return args


async def amain(args: argparse.Namespace) -> None:
    async def body(client: Client) -> None:
        store = Store(client, args.etcd_prefix)

        async def lead(writer: Writer) -> None:
            informers = Informers(store, resync_period=args.resync_period)
            controllers: list[Controller] = []
            if "nodelifecycle" in args.controllers:
                controllers.append(
                    NodeLifecycleController(
                        store,
                        writer,
                        informers,
                        monitor_period=args.node_monitor_period,
                        grace_period=args.node_monitor_grace_period,
                    )
                )
            if "taint-eviction-controller" in args.controllers:
                controllers.append(
                    TaintEvictionController(
                        store,
                        writer,
                        informers,
                        default_toleration_seconds=args.pod_eviction_timeout,
                    )
                )
            if "replicaset" in args.controllers:
                controllers.append(
                    ReplicaSetController(
                        store, writer, informers, workers=args.concurrent_replicaset_syncs
                    )
                )
            if "deployment" in args.controllers:
                controllers.append(
                    DeploymentController(
                        store, writer, informers, workers=args.concurrent_deployment_syncs
                    )
                )
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(informers.run)
                for controller in controllers:
                    tasks.start_soon(controller.run)

        await run_leader_elected(client, args, lead)

    await serve(args, body)


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    setup_logging(args.verbose)
    set_component("controller-manager")
    emit("config", controllers=args.controllers)
    eventloop.run(amain, args)


if __name__ == "__main__":
    main()

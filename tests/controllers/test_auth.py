"""The controllers log in to a store with auth enabled (a real etcd, and ours) and do their work.

The controller-manager, the scheduler and a node agent run as a user whose role
may read and write only the test's registry prefix and the lock records, with the
password in a file; a ReplicaSet's pods end up scheduled and Running.
"""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from controllers.objects import Obj
from controllers.store import DirectWriter, Store
from kvstore.client import Client, UserEmptyError
from kvstore.local.cluster import KVCluster
from kvstore.local.etcd import EtcdCluster
from tests.controllers.harness import Processes
from tests.controllers.scenario import (
    Names,
    controller_manager_flags,
    election_flags,
    node_flags,
    replicaset,
)

REPLICAS = 3


async def _running(store: Store) -> list[Obj]:
    pods, _ = await store.list("pods", "default")
    return [p for p in pods if (p.get("status") or {}).get("phase") == "Running"]


@pytest.mark.parametrize("kind", ["etcd", "kvstore"])
async def test_controllers_on_a_store_with_auth(kind: str, tmp_path: Path) -> None:
    names = Names.fresh()
    cluster = {"etcd": EtcdCluster, "kvstore": KVCluster}[kind](root=tmp_path / kind, size=1)
    cluster.start()
    try:
        async with Client(cluster.endpoints) as setup:
            await setup.user_add("root", "rootpw")
            await setup.user_grant_role("root", "root")
            await setup.user_add("kcm", "kcm-secret")
            await setup.role_add("controllers")
            await setup.role_grant_permission("controllers", "readwrite", names.prefix, prefix=True)
            await setup.role_grant_permission("controllers", "readwrite", "/registry/", prefix=True)
            await setup.user_grant_role("kcm", "controllers")
            await setup.auth_enable()
            with pytest.raises(UserEmptyError):
                await setup.put(f"{names.prefix}/x", "no user")
        password_file = tmp_path / "password"
        password_file.write_text("kcm-secret\n")
        login = ["--etcd-username", "kcm", "--etcd-password-file", str(password_file)]
        async with (
            Client(cluster.endpoints, user="root", password="rootpw") as root,
            anyio.create_task_group() as tasks,
        ):
            procs = Processes(tasks, cluster.endpoints, tmp_path)
            try:
                await procs.start(
                    "kcm", "controller_manager", *controller_manager_flags(names), *login
                )
                await procs.start("sched", "scheduler", *election_flags(names), *login)
                await procs.start("node", "node_agent", *node_flags(names, "node-1"), *login)
                store = Store(root, names.prefix)
                await store.create(DirectWriter(root), "replicasets", replicaset("web", REPLICAS))
                with anyio.fail_after(60):
                    async with root.watch(store.resource_prefix("pods"), prefix=True) as pods:
                        if len(await _running(store)) < REPLICAS:
                            async for _ in pods:
                                if len(await _running(store)) == REPLICAS:
                                    break
                running = await _running(store)
                assert {p["spec"]["nodeName"] for p in running} == {"node-1"}
            finally:
                await procs.close()
                tasks.cancel_scope.cancel()
    finally:
        cluster.stop()

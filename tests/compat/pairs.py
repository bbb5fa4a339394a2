"""Our 3-member cluster and a real 3-member etcd, started side by side with the same flags."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest

from kvstore.local.cluster import KVCluster
from kvstore.local.etcd import EtcdCluster
from kvstore.local.tls import Certificates

Server = KVCluster | EtcdCluster


@contextlib.contextmanager
def side_by_side(
    tmp_path_factory: pytest.TempPathFactory,
    label: str,
    flags: tuple[str, ...] = (),
    tls: Certificates | None = None,
    size: int = 3,
) -> Iterator[dict[str, Server]]:
    """``{"etcd": ..., "kvstore": ...}`` of ``size`` members each, serving until the block ends.

    With ``tls``, both serve https client and peer URLs and require client certificates.
    """
    etcd = EtcdCluster(
        root=tmp_path_factory.mktemp(f"{label}-etcd"), size=size, extra_args=[*flags], tls=tls
    )
    ours = KVCluster(
        root=tmp_path_factory.mktemp(f"{label}-kv"), size=size, extra_args=[*flags], tls=tls
    )
    try:
        etcd.start()
        ours.start()
        yield {"etcd": etcd, "kvstore": ours}
    finally:
        ours.stop()
        etcd.stop()

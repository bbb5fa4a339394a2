"""The limits etcd takes as flags: ``--max-txn-ops`` moves where a transaction is refused
(with etcd's error), ``--max-concurrent-streams`` is what the member tells clients."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from kvstore.client import Client, EtcdError, txn
from kvstore.local.cluster import KVCluster
from kvstore.rpc import frames as fr


def _advertised_settings(host: str, port: int) -> dict[int, int]:
    """The SETTINGS frame a member sends a new HTTP/2 connection first."""
    with socket.create_connection((host, port), timeout=10) as sock:
        sock.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        header = b""
        while len(header) < 9:
            header += sock.recv(9 - len(header))
        length, kind = int.from_bytes(header[:3], "big"), header[3]
        assert kind == fr.FrameType.SETTINGS
        payload = b""
        while len(payload) < length:
            payload += sock.recv(length - len(payload))
    return {
        int.from_bytes(payload[i : i + 2], "big"): int.from_bytes(payload[i + 2 : i + 6], "big")
        for i in range(0, length, 6)
    }


async def test_max_txn_ops_and_max_concurrent_streams(tmp_path: Path) -> None:
    cluster = KVCluster(
        root=tmp_path, size=1, extra_args=["--max-txn-ops=3", "--max-concurrent-streams=7"]
    )
    cluster.start()
    try:
        async with Client(cluster.endpoints) as client:
            three = client.txn().then(*(txn.put(f"/lim/{i}", "v") for i in range(3)))
            assert (await three.commit()).succeeded
            four = client.txn().then(*(txn.put(f"/lim/{i}", "v") for i in range(4)))
            with pytest.raises(EtcdError, match="etcdserver: too many operations in txn request"):
                await four.commit()
        host, port = cluster.endpoints[0].rsplit(":", 1)
        settings = _advertised_settings(host, int(port))
        assert settings[fr.Setting.MAX_CONCURRENT_STREAMS] == 7
    finally:
        cluster.stop()

"""Where a member serves HTTP: next to gRPC on the client port, or on its own client HTTP URLs."""

from __future__ import annotations

import json
from pathlib import Path

import aiohttp
import pytest

from kvstore.client import Client
from kvstore.local.cluster import KVCluster
from kvstore.ports import free_ports
from tests.compat.gateway_http import call

PUT = json.dumps({"key": "L2xpc3RlbmVycw==", "value": "eWVz"}).encode()


async def test_listen_client_http_urls_split_http_from_grpc(tmp_path: Path) -> None:
    (http_port,) = free_ports(1)
    http_url = f"http://127.0.0.1:{http_port}"
    cluster = KVCluster(root=tmp_path, size=1, extra_args=[f"--listen-client-http-urls={http_url}"])
    cluster.start()
    try:
        member = cluster.members[0]
        async with aiohttp.ClientSession() as session:
            put = await call(session, f"{http_url}/v3/kv/put", PUT)
            assert put.status == 200, put
            health = await call(session, f"{http_url}/health", method="GET")
            assert health.json() == {"health": "true", "reason": ""}
            # The client URL now speaks gRPC only, as etcd's does with this flag.
            with pytest.raises(aiohttp.ClientError):
                await call(session, f"{member.client_url}/v3/kv/put", PUT)
        async with Client(cluster.endpoints, default_timeout=10) as client:
            assert (await client.get("/listeners")).kvs[0].value == b"yes"
    finally:
        cluster.stop()


async def test_the_client_port_serves_grpc_and_http(tmp_path: Path) -> None:
    cluster = KVCluster(root=tmp_path, size=1)
    cluster.start()
    try:
        url = cluster.members[0].client_url
        async with aiohttp.ClientSession() as session:
            put = await call(session, f"{url}/v3/kv/put", PUT)
            assert put.status == 200, put
            version = await call(session, f"{url}/version", method="GET")
            assert version.json()["etcdserver"].startswith("3.5")
            metrics = await call(session, f"{url}/metrics", method="GET")
            assert "etcd_server_has_leader 1" in metrics.body
        async with Client(cluster.endpoints, default_timeout=10) as client:
            assert (await client.get("/listeners")).kvs[0].value == b"yes"
    finally:
        cluster.stop()

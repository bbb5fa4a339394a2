"""Clients that speak only etcd's JSON gateway, against a real etcd and against us.

OpenStack's etcd3gw (tooz's and oslo.cache's etcd driver) and Patroni's etcd3
DCS (PostgreSQL failover: a leader key under a lease, and a watch), driven
through their own APIs; plus a watch read chunk by chunk and a lease kept
alive over plain HTTP. Patroni's scenario also runs on three members, one of
which is killed under it.
"""

from __future__ import annotations

import base64
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import etcd3gw
import pytest

from kvstore.local.cluster import KVCluster
from kvstore.local.etcd import EtcdCluster
from tests.compat.gateway_http import call, chunks_of

Server = KVCluster | EtcdCluster


@pytest.fixture(scope="module")
def ours(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KVCluster]:
    cluster = KVCluster(root=Path(tmp_path_factory.mktemp("gw-clients")), size=1)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(params=["etcd", "kvstore"])
def server(request: pytest.FixtureRequest) -> Server:
    fixture = "etcd" if request.param == "etcd" else "ours"
    cluster: Server = request.getfixturevalue(fixture)
    return cluster


def _address(server: Server, index: int = 0) -> tuple[str, int]:
    member = server.members[index]
    return "127.0.0.1", member.client_port


def b64(text: str | bytes) -> str:
    return base64.b64encode(text.encode() if isinstance(text, str) else text).decode()


def _until(condition: Callable[[], Any], timeout: float = 30, what: str = "") -> Any:
    """Poll ``condition`` until it returns something true (no event to wait on)."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or condition}")
        time.sleep(0.1)


# ----- etcd3gw


def test_etcd3gw_keys_transactions_and_leases(server: Server) -> None:
    host, port = _address(server)
    client = etcd3gw.client(host=host, port=port, timeout=10)
    prefix = f"/etcd3gw/{uuid.uuid4().hex[:8]}/"
    status = client.status()
    assert status["version"].startswith("3.5") and status["header"]["cluster_id"]
    members = client.members()
    assert [m["clientURLs"] for m in members] == [[server.members[0].client_url]]
    assert members[0]["peerURLs"]

    assert client.put(prefix + "a", "1")
    assert client.create(prefix + "b", "2")
    assert not client.create(prefix + "b", "again")  # CREATE==0 compare fails
    assert client.replace(prefix + "a", "1", "1b")
    assert not client.replace(prefix + "a", "1", "1c")
    assert client.get(prefix + "a") == [b"1b"]
    assert client.get(prefix + "missing") == []
    ordered = client.get_prefix(prefix, sort_order="descend", sort_target="key")
    assert [meta["key"] for _, meta in ordered] == [(prefix + k).encode() for k in "ba"]
    assert client.delete(prefix + "a")
    assert not client.delete(prefix + "a")  # no "deleted" key in the answer: nothing was
    assert client.delete_prefix(prefix)

    lease = client.lease(ttl=30)
    assert client.put(prefix + "leased", "x", lease=lease)
    assert 0 < lease.ttl() <= 30
    assert lease.refresh() == 30
    assert lease.keys() == [(prefix + "leased").encode()]
    assert lease.revoke()
    assert client.get(prefix + "leased") == []
    assert lease.refresh() == -1  # gone: the keep-alive answer has no TTL


def test_etcd3gw_lock(server: Server) -> None:
    host, port = _address(server)
    client = etcd3gw.client(host=host, port=port, timeout=10)
    name = uuid.uuid4().hex
    first, second = client.lock(name, ttl=30), client.lock(name, ttl=30)
    assert first.acquire()
    assert first.is_acquired()
    assert not second.acquire()
    assert first.refresh() == 30
    assert first.release()
    assert second.acquire()
    assert second.release()


def test_etcd3gw_watch_sees_puts_deletes_and_a_large_value(server: Server) -> None:
    host, port = _address(server)
    client = etcd3gw.client(host=host, port=port, timeout=10)
    prefix = f"/etcd3gw-watch/{uuid.uuid4().hex[:8]}/"
    # From the next revision on: what happens before the watch is set up is replayed.
    start = int(client.status()["header"]["revision"]) + 1
    events, cancel = client.watch_prefix(prefix, start_revision=start)
    big = "x" * 13_000  # etcd3gw decodes each HTTP chunk as one JSON object
    received: list[tuple[str, bytes, bytes]] = []
    try:

        def consume() -> None:
            for event in events:
                kv = event["kv"]
                received.append((event.get("type", "PUT"), kv["key"], kv.get("value", b"")))
                if event.get("type") == "DELETE":
                    return

        reader = threading.Thread(target=consume, daemon=True)
        reader.start()
        client.put(prefix + "big", big)
        client.delete(prefix + "big")
        reader.join(timeout=30)
        assert not reader.is_alive()
    finally:
        cancel()
    assert received == [
        ("PUT", (prefix + "big").encode(), big.encode()),
        ("DELETE", (prefix + "big").encode(), b""),
    ]


# ----- raw HTTP: a watch chunk by chunk, a lease kept alive


async def test_watch_chunks_carry_one_json_object_each(server: Server) -> None:
    base = server.members[0].client_url
    key = f"/chunks/{uuid.uuid4().hex[:8]}"
    create = {"create_request": {"key": b64(key), "prev_kv": True}}
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{base}/v3/watch", data=json.dumps(create)) as watch,
    ):
        assert watch.headers["Transfer-Encoding"] == "chunked"
        chunks = chunks_of(watch)

        async def next_object() -> dict[str, Any]:
            while True:
                chunk = await anext(chunks)
                if chunk.strip():  # etcd sends the newline of a large message alone
                    parsed: dict[str, Any] = json.loads(chunk)  # one whole object per chunk
                    return parsed

        assert (await next_object())["result"]["created"] is True
        for value in ("small", "y" * 13_000, "small again"):
            put = await call(
                session,
                f"{base}/v3/kv/put",
                json.dumps({"key": b64(key), "value": b64(value)}).encode(),
            )
            assert put.status == 200, put
            event = (await next_object())["result"]["events"][0]
            assert base64.b64decode(event["kv"]["value"]).decode() == value


async def test_a_lease_kept_alive_over_http_outlives_its_ttl_then_expires(server: Server) -> None:
    base = server.members[0].client_url
    key = b64(f"/keepalive/{uuid.uuid4().hex[:8]}")
    lease_id = int(uuid.uuid4().int % 2**62)
    async with aiohttp.ClientSession() as session:

        async def post(path: str, body: dict[str, Any]) -> Any:
            answer = await call(session, base + path, json.dumps(body).encode())
            assert answer.status == 200, answer
            return [json.loads(chunk) for chunk in answer.chunks if chunk.strip()]

        [granted] = await post("/v3/lease/grant", {"ID": lease_id, "TTL": 3})
        assert granted["TTL"] == "3"
        await post("/v3/kv/put", {"key": key, "value": b64("v"), "lease": lease_id})
        kept_until = time.monotonic() + 8  # well past the TTL
        while time.monotonic() < kept_until:
            [renewed] = await post("/v3/lease/keepalive", {"ID": lease_id})
            assert renewed["result"]["TTL"] == "3"
            [got] = await post("/v3/kv/range", {"key": key})
            assert got["count"] == "1"
            await _sleep(1)  # a client's renewal period (a third of the TTL)
        deadline = time.monotonic() + 30
        while True:
            [got] = await post("/v3/kv/range", {"key": key})
            if "count" not in got:
                break
            assert time.monotonic() < deadline, "the lease did not expire"
            await _sleep(0.2)
        [gone] = await post("/v3/lease/keepalive", {"ID": lease_id})
        assert "TTL" not in gone["result"]


async def _sleep(seconds: float) -> None:
    import asyncio

    await asyncio.sleep(seconds)


# ----- Patroni's etcd3 DCS


def _patroni_dcs(hosts: list[str], scope: str, name: str) -> Any:
    from patroni.dcs import get_dcs

    config = {
        "scope": scope,
        "name": name,
        "ttl": 10,
        "loop_wait": 1,
        "retry_timeout": 10,
        "etcd3": {"hosts": hosts},
    }
    return get_dcs(config)


def _stop_patroni_watcher(dcs: Any) -> None:
    """Park the DCS's watch thread (Patroni's never stop: its process exits instead)."""
    cache = getattr(dcs._client, "_kv_cache", None)
    if cache is None:
        return
    cache._build_cache = threading.Event().wait  # its loop's next round waits forever, idle
    cache.kill_stream()


def _leader(dcs: Any) -> str | None:
    cluster = dcs.get_cluster()
    return cluster.leader.name if cluster.leader else None


def _patroni_scenario(hosts: list[str], on_leader: Callable[[Any], None] | None = None) -> None:
    scope = f"pg-{uuid.uuid4().hex[:8]}"
    nodes = [_patroni_dcs(hosts, scope, name) for name in ("pg0", "pg1")]
    pg0, pg1 = nodes
    try:
        assert pg0.touch_member(
            {"conn_url": "postgres://127.0.0.1:5432/postgres", "state": "running"}
        )
        assert pg0.initialize(create_new=True, sysid="7000000000000000001")
        assert pg0.attempt_to_acquire_leader()
        assert not pg1.attempt_to_acquire_leader()
        # pg1 learns of the leader through its watch of the cluster's keys.
        _until(lambda: _leader(pg1) == "pg0", what="pg1 to see pg0 lead")
        if on_leader is not None:
            on_leader(pg0)
        cluster = pg0.get_cluster()
        _until(lambda: pg0.update_leader(cluster, None), what="pg0 to renew its leader key")
        assert pg0.touch_member(
            {
                "conn_url": "postgres://127.0.0.1:5432/postgres",
                "state": "running",
                "role": "primary",
            }
        )
        _until(
            lambda: (
                (m := pg1.get_cluster().get_member("pg0", fallback_to_leader=False))
                and m.data.get("role") == "primary"
            ),
            what="pg1 to see pg0's new member data",
        )
        # pg0 stops renewing (its process froze): its lease runs out, the leader key goes.
        _until(lambda: _leader(pg1) is None, timeout=40, what="pg0's leader key to expire")
        assert pg1.attempt_to_acquire_leader()
        _until(lambda: _leader(pg0) == "pg1", what="pg0 to see pg1 lead")
        assert pg1.delete_leader(pg1.get_cluster().leader)
        _until(lambda: _leader(pg0) is None, what="pg0 to see the leader key deleted")
        assert pg0.delete_cluster()
    finally:
        for dcs in nodes:
            _stop_patroni_watcher(dcs)


def test_patroni_leader_key_lease_and_watch(server: Server) -> None:
    logging.getLogger("patroni").setLevel(logging.WARNING)
    _patroni_scenario([f"127.0.0.1:{m.client_port}" for m in server.members])


@pytest.mark.parametrize("kind", ["etcd", "kvstore"])
def test_patroni_survives_the_loss_of_its_member(kind: str, tmp_path: Path) -> None:
    """Patroni discovers the members (member list), and moves on when its member dies."""
    logging.getLogger("patroni").setLevel(logging.WARNING)
    cluster: Server = (
        EtcdCluster(root=tmp_path / "etcd", size=3)
        if kind == "etcd"
        else KVCluster(root=tmp_path / "ours", size=3)
    )
    cluster.start()
    try:

        def kill_its_member(dcs: Any) -> None:
            used = dcs._client._base_uri  # e.g. http://127.0.0.1:2379
            index = next(i for i, m in enumerate(cluster.members) if m.client_url == used)
            cluster.kill(index)
            # The next calls fail over to a member still alive.
            _until(lambda: dcs.touch_member({"state": "running"}), what="a write after the kill")
            assert dcs._client._base_uri != used

        _patroni_scenario([f"127.0.0.1:{cluster.members[0].client_port}"], kill_its_member)
    finally:
        cluster.stop()

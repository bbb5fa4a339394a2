"""etcd's v3lock and v3election gRPC services: our cluster answers as a real etcd does."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import anyio
import grpc
import pytest

from kvstore._pb.v3electionpb import v3election_pb2 as epb
from kvstore._pb.v3electionpb import v3election_pb2_grpc
from kvstore._pb.v3lockpb import v3lock_pb2 as lpb
from kvstore._pb.v3lockpb import v3lock_pb2_grpc
from kvstore.client import Client
from kvstore.local.cluster import KVCluster
from kvstore.local.etcd import EtcdCluster


@pytest.fixture(scope="module")
def ours(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KVCluster]:
    cluster = KVCluster(root=Path(tmp_path_factory.mktemp("svc")), size=3)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


async def _error(call: object) -> tuple[str, str]:
    try:
        await call  # type: ignore[misc]
    except grpc.aio.AioRpcError as exc:
        return exc.code().name, exc.details() or ""
    raise AssertionError("the call did not fail")


async def _session(endpoints: list[str], prefix: str) -> list[object]:
    """Run the scenario; return what must be the same on both servers."""
    seen: list[object] = []
    async with (
        Client(endpoints, default_timeout=15) as client,
        grpc.aio.insecure_channel(endpoints[0]) as channel,
    ):
        locks = v3lock_pb2_grpc.LockStub(channel)  # type: ignore[no-untyped-call]
        elections = v3election_pb2_grpc.ElectionStub(channel)  # type: ignore[no-untyped-call]
        first, second = (await client.grant(30)).ID, (await client.grant(30)).ID
        name = f"{prefix}/lock".encode()

        held = await locks.Lock(lpb.LockRequest(name=name, lease=first), timeout=15)
        seen.append(held.key == name + b"/" + format(first, "x").encode())
        second_key: list[bytes] = []

        async def wait_second() -> None:
            got = await locks.Lock(lpb.LockRequest(name=name, lease=second), timeout=30)
            second_key.append(got.key)

        after = held.header.revision + 1
        async with (
            client.watch(name + b"/", prefix=True, start_revision=after) as queued,
            anyio.create_task_group() as tg,
        ):
            tg.start_soon(wait_second)
            with anyio.fail_after(15):
                await anext(aiter(queued))  # the waiter's key: it is queued behind us
            seen.append(("queued, not granted", second_key == []))
            await locks.Unlock(lpb.UnlockRequest(key=held.key), timeout=15)
        seen.append(second_key == [name + b"/" + format(second, "x").encode()])
        await locks.Unlock(lpb.UnlockRequest(key=second_key[0]), timeout=15)
        seen.append((await client.get(name + b"/", prefix=True)).count)

        election = f"{prefix}/election".encode()
        seen.append(await _error(elections.Leader(epb.LeaderRequest(name=election), timeout=15)))
        campaign = await elections.Campaign(
            epb.CampaignRequest(name=election, lease=first, value=b"a"), timeout=15
        )
        leader = campaign.leader
        seen.append((leader.name == election, leader.lease == first, leader.rev > 0))
        current = await elections.Leader(epb.LeaderRequest(name=election), timeout=15)
        seen.append((current.kv.key == leader.key, current.kv.value))
        observe = elections.Observe(epb.LeaderRequest(name=election))
        seen.append((await anext(aiter(observe))).kv.value)
        await elections.Proclaim(epb.ProclaimRequest(leader=leader, value=b"b"), timeout=15)
        seen.append((await anext(aiter(observe))).kv.value)
        observe.cancel()
        seen.append(await _error(elections.Proclaim(epb.ProclaimRequest(value=b"c"), timeout=15)))
        await elections.Resign(epb.ResignRequest(leader=leader), timeout=15)
        seen.append(await _error(elections.Leader(epb.LeaderRequest(name=election), timeout=15)))
        stale = epb.ProclaimRequest(leader=leader, value=b"d")
        seen.append(await _error(elections.Proclaim(stale, timeout=15)))
        # A leader key without its key (found by the fuzz test): etcd's recipe sends the
        # empty key on and its txn is refused.
        keyless = epb.LeaderKey(name=election, lease=first)
        seen.append(
            await _error(elections.Proclaim(epb.ProclaimRequest(leader=keyless), timeout=15))
        )
        seen.append(await _error(elections.Resign(epb.ResignRequest(leader=keyless), timeout=15)))
    return seen


async def test_lock_and_election_services_like_etcd(etcd: EtcdCluster, ours: KVCluster) -> None:
    expected = await _session(etcd.endpoints, "/svc-etcd")
    assert await _session(ours.endpoints, "/svc-ours") == expected
    assert expected[4] == ("UNKNOWN", "election: no leader")
    assert expected[-3] == ("UNKNOWN", "election: not leader")
    assert expected[-5] == ("UNKNOWN", '"leader" field must be provided')
    assert expected[-2:] == [("UNKNOWN", "etcdserver: key is not provided")] * 2

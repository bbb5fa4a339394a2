"""The peer transport: connections to every peer, batched messages, snapshots in chunks,
calls to the leader, and refusals of other clusters and removed members."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import anyio
import pytest

from kvstore._pb.etcdserverpb import rpc_pb2
from kvstore.errors import NotPrimaryError, RemoteError
from kvstore.ports import free_ports
from kvstore.raft.types import (
    ConfState,
    Entry,
    EntryType,
    Message,
    MessageType,
    Snapshot,
    SnapshotMetadata,
)
from kvstore.rpc.status import StatusCode
from kvstore.server.config import TLSFiles
from kvstore.server.metrics import Metrics
from kvstore.server.peerlistener import CallSpec, PeerListener
from kvstore.server.peerwire import (
    MEMBER_REMOVED_MESSAGE,
    PeerMethod,
    StreamKind,
    hello,
    parse_hello,
)
from kvstore.server.transport import Transport

CLUSTER = 0x1234
SENDER, RECEIVER = 0xA, 0xB
DEADLINE = 30.0


@dataclass
class Pair:
    """A sending transport and the listener of its one peer."""

    transport: Transport
    listener: PeerListener
    url: str
    delivered: list[Message] = field(default_factory=list)
    removed_told: asyncio.Event = field(default_factory=asyncio.Event)
    unreachable: list[int] = field(default_factory=list)
    snapshots: list[tuple[int, bool]] = field(default_factory=list)


async def _until(check: Callable[[], bool]) -> None:
    with anyio.fail_after(DEADLINE):
        while not check():  # noqa: ASYNC110
            await asyncio.sleep(0.02)  # connection state has no event to await


@pytest.fixture
async def pair() -> AsyncIterator[Pair]:
    (port,) = free_ports(1)
    url = f"http://127.0.0.1:{port}"
    delivered: list[Message] = []
    listener = PeerListener(CLUSTER, delivered.extend)
    await listener.listen(url, TLSFiles(prefix="peer-"))
    unreachable: list[int] = []
    snapshots: list[tuple[int, bool]] = []
    transport = Transport(
        SENDER,
        CLUSTER,
        {SENDER: "http://127.0.0.1:1", RECEIVER: url},
        Metrics(),
        unreachable.append,
        lambda peer, ok: snapshots.append((peer, ok)),
    )
    p = Pair(transport, listener, url, delivered, unreachable=unreachable, snapshots=snapshots)
    transport.on_removed = p.removed_told.set
    task = asyncio.create_task(transport.run())
    try:
        yield p
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await transport.close()
        await listener.close()


def _app(index: int) -> Message:
    entry = Entry(term=1, index=index, type=EntryType.NORMAL, data=b"x%d" % index)
    return Message(
        type=MessageType.APP, to=RECEIVER, frm=SENDER, term=1, index=index - 1, entries=[entry]
    )


async def test_idle_peer_counts_as_connected_until_it_goes(pair: Pair) -> None:
    peer = pair.transport.peers[RECEIVER]
    await _until(lambda: peer.connected_since() is not None)
    assert pair.delivered == [], "nothing was sent, yet the peer counts as connected"
    await pair.listener.close()
    await _until(lambda: peer.connected_since() is None)


async def test_messages_arrive_in_order(pair: Pair) -> None:
    sent = [_app(i) for i in range(1, 2001)]
    pair.transport.send(sent)
    await _until(lambda: len(pair.delivered) == len(sent))
    assert [m.index for m in pair.delivered] == [m.index for m in sent]
    assert pair.delivered[0].entries[0].data == b"x1"


async def test_a_snapshot_travels_in_chunks(pair: Pair) -> None:
    data = bytes(range(256)) * (3 * 1024 * 16)  # 12 MiB: several chunks
    meta = SnapshotMetadata(index=42, term=3, conf_state=ConfState(voters=(SENDER, RECEIVER)))
    snap = Message(
        type=MessageType.SNAP, to=RECEIVER, frm=SENDER, term=3, snapshot=Snapshot(meta, data)
    )
    pair.transport.send([snap])
    await _until(lambda: bool(pair.snapshots))
    assert pair.snapshots == [(RECEIVER, True)]
    (got,) = [m for m in pair.delivered if m.type == MessageType.SNAP]
    assert got.snapshot is not None and got.snapshot.data == data
    assert got.snapshot.metadata == meta


async def test_calls_reach_the_peer_and_carry_its_errors(pair: Pair) -> None:
    async def renew(req: rpc_pb2.LeaseKeepAliveRequest) -> rpc_pb2.LeaseKeepAliveResponse:
        if req.ID == 0:
            raise NotPrimaryError()
        return rpc_pb2.LeaseKeepAliveResponse(ID=req.ID, TTL=7)

    pair.listener.calls[PeerMethod.LEASE_RENEW] = CallSpec(rpc_pb2.LeaseKeepAliveRequest, renew)
    t = pair.transport
    resp = await t.call(
        RECEIVER,
        PeerMethod.LEASE_RENEW,
        rpc_pb2.LeaseKeepAliveRequest(ID=5),
        rpc_pb2.LeaseKeepAliveResponse,
        timeout=10,
    )
    assert (resp.ID, resp.TTL) == (5, 7)
    with pytest.raises(RemoteError) as refused:
        await t.call(
            RECEIVER,
            PeerMethod.LEASE_RENEW,
            rpc_pb2.LeaseKeepAliveRequest(ID=0),
            rpc_pb2.LeaseKeepAliveResponse,
            timeout=10,
        )
    assert refused.value.code == StatusCode.FAILED_PRECONDITION
    assert refused.value.message == "etcdserver: not leader"


async def test_a_removed_member_is_refused_and_told(pair: Pair) -> None:
    pair.listener.removed = {SENDER}
    with anyio.fail_after(DEADLINE):
        await pair.removed_told.wait()
    assert pair.transport.peers[RECEIVER].connected_since() is None
    assert MEMBER_REMOVED_MESSAGE.startswith("the member has been permanently removed")


async def test_a_member_removed_while_connected_is_told(pair: Pair) -> None:
    peer = pair.transport.peers[RECEIVER]
    await _until(lambda: peer.connected_since() is not None)
    pair.listener.removed.add(SENDER)
    pair.transport.send([_app(1)])
    with anyio.fail_after(DEADLINE):
        await pair.removed_told.wait()
    assert pair.delivered == []


async def test_another_cluster_is_refused(pair: Pair) -> None:
    pair.listener.cluster_id = CLUSTER + 1
    await _until(lambda: RECEIVER in pair.unreachable)
    assert pair.transport.peers[RECEIVER].connected_since() is None


def test_the_hello_names_the_sender() -> None:
    start = hello(CLUSTER, 0x8E9E05C52164694D, StreamKind.MESSAGES)
    assert parse_hello(start) == (CLUSTER, 0x8E9E05C52164694D, StreamKind.MESSAGES)
    for cut in range(len(start)):
        assert parse_hello(start[:cut]) is None, cut
    assert parse_hello(b"GET / HTTP/1.1\r\n\r\n" + bytes(40)) is None

"""The peer transport holds a connection to every peer, whether or not Raft talks to it.

etcd's membership health check asks how long the leader has been connected to
each voter; a follower that just became leader must count as connected to the
other followers since it started, not since its first message to them.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import anyio
import grpc
import pytest

from kvstore._pb.peerpb import peer_pb2_grpc
from kvstore.raft.types import Message
from kvstore.server.metrics import Metrics
from kvstore.server.transport import PeerReceiver, Transport

CLUSTER = 0x1234
SENDER, RECEIVER = 0xA, 0xB


class _Peer(peer_pb2_grpc.PeerServicer):
    def __init__(self, receiver: PeerReceiver) -> None:
        self.receiver = receiver

    async def Send(self, request_iterator, context):
        return await self.receiver.handle(request_iterator, context)


@pytest.fixture
async def receiving_peer() -> AsyncIterator[tuple[int, list[Message], grpc.aio.Server]]:
    delivered: list[Message] = []
    server = grpc.aio.server()
    receiver = PeerReceiver(CLUSTER, delivered.extend)
    peer_pb2_grpc.add_PeerServicer_to_server(_Peer(receiver), server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield port, delivered, server
    await server.stop(grace=None)


async def test_idle_peer_counts_as_connected(
    receiving_peer: tuple[int, list[Message], grpc.aio.Server],
) -> None:
    port, delivered, server = receiving_peer
    transport = Transport(
        SENDER,
        CLUSTER,
        {SENDER: "http://127.0.0.1:1", RECEIVER: f"http://127.0.0.1:{port}"},
        Metrics(),
        lambda peer: None,
        lambda peer, ok: None,
    )
    peer = transport.peers[RECEIVER]
    task = asyncio.create_task(transport.run())
    try:
        with anyio.fail_after(30):
            while peer.connected_since() is None:  # noqa: ASYNC110
                await asyncio.sleep(0.05)  # the channel reports its state; no event to await
        assert delivered == [], "nothing was sent, yet the peer counts as connected"
        await server.stop(grace=None)
        with anyio.fail_after(30):
            while peer.connected_since() is not None:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await transport.close()

"""Peer transport: one outbound gRPC client stream per peer, bounded queues.

Raft tolerates loss, so a full queue drops the message and reports the peer
unreachable (the leader then probes it instead of pipelining). A broken
stream is reopened with exponential backoff. Inbound batches are accepted only
from members of our cluster. Snapshots travel inline in a MsgSnap (no
chunking yet), so a snapshot must fit in one gRPC message.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable

import grpc

from kvstore._pb.peerpb import peer_pb2, peer_pb2_grpc
from kvstore.raft.types import Message, MessageType
from kvstore.server.codec import message_from_pb, message_to_pb
from kvstore.server.config import host_port
from kvstore.server.metrics import Metrics

log = logging.getLogger(__name__)

QUEUE_SIZE = 4096
"""Messages queued per peer before new ones are dropped."""
MAX_BATCH = 512
"""Messages per stream write."""
MAX_MESSAGE_BYTES = 256 * 1024 * 1024
BACKOFF_MIN = 0.05
BACKOFF_MAX = 1.0
GRPC_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", 2000),
    ("grpc.keepalive_timeout_ms", 2000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.initial_reconnect_backoff_ms", 50),
    ("grpc.max_reconnect_backoff_ms", 1000),
]
PEER_USER_AGENT = "kvstore-peer/"
"""Followed by the sender's member id (hex): every peer call names its sender, so a
proxy on the link (the chaos harness's fault proxy) can tell who is talking."""


class Peer:
    """Outbound stream to one peer."""

    def __init__(
        self,
        peer_id: int,
        url: str,
        transport: Transport,
    ) -> None:
        self.id = peer_id
        host, port = host_port(url)
        self.target = f"{host}:{port}"
        self.transport = transport
        self.queue: asyncio.Queue[Message] = asyncio.Queue(QUEUE_SIZE)
        self.channel: grpc.aio.Channel | None = None

    def stub(self) -> peer_pb2_grpc.PeerStub:
        if self.channel is None:
            user_agent = f"{PEER_USER_AGENT}{self.transport.self_id:x}"
            options = [*GRPC_OPTIONS, ("grpc.primary_user_agent", user_agent)]
            self.channel = grpc.aio.insecure_channel(self.target, options=options)
        return peer_pb2_grpc.PeerStub(self.channel)  # type: ignore[no-untyped-call]

    async def run(self) -> None:
        backoff = BACKOFF_MIN
        t = self.transport
        while True:
            first = await self.queue.get()
            call = self.stub().Send()
            try:
                pending: list[Message] | None = [first]
                while True:
                    if pending is None:
                        pending = [await self.queue.get()]
                    while len(pending) < MAX_BATCH and not self.queue.empty():
                        pending.append(self.queue.get_nowait())
                    batch = peer_pb2.MessageBatch(cluster_id=t.cluster_id, frm=t.self_id)
                    batch.messages.extend(message_to_pb(m) for m in pending)
                    snaps = [m for m in pending if m.type == MessageType.SNAP]
                    await call.write(batch)
                    for _ in snaps:
                        t.on_snapshot_sent(self.id, True)
                    pending = None
                    backoff = BACKOFF_MIN
            except (grpc.aio.AioRpcError, asyncio.InvalidStateError, grpc.aio.UsageError) as exc:
                log.debug("stream to peer %x broke: %s", self.id, exc)
                t.metrics.peer_sent_failures[f"{self.id:x}"] = (
                    t.metrics.peer_sent_failures.get(f"{self.id:x}", 0) + 1
                )
                t.on_unreachable(self.id)
                call.cancel()
                # Drop what is queued: Raft retransmits what matters.
                while not self.queue.empty():
                    m = self.queue.get_nowait()
                    if m.type == MessageType.SNAP:
                        t.on_snapshot_sent(self.id, False)
                await asyncio.sleep(backoff)
                backoff = min(BACKOFF_MAX, backoff * 2)
            except BaseException:
                call.cancel()
                raise

    async def close(self) -> None:
        if self.channel is not None:
            await self.channel.close(grace=None)


class Transport:
    """All outbound peers, plus the inbound ``Peer.Send`` handler."""

    def __init__(
        self,
        self_id: int,
        cluster_id: int,
        peers: dict[int, str],
        metrics: Metrics,
        on_unreachable: Callable[[int], None],
        on_snapshot: Callable[[int, bool], None],
    ) -> None:
        self.self_id = self_id
        self.cluster_id = cluster_id
        self.metrics = metrics
        self.on_unreachable = on_unreachable
        self.on_snapshot_sent = on_snapshot
        self.peers = {pid: Peer(pid, url, self) for pid, url in peers.items() if pid != self_id}

    def send(self, msgs: list[Message]) -> None:
        """Queue messages (called by the raft loop; never blocks)."""
        peers = self.peers
        for m in msgs:
            p = peers.get(m.to)
            if p is None:
                continue
            try:
                p.queue.put_nowait(m)
            except asyncio.QueueFull:
                self.on_unreachable(m.to)
                if m.type == MessageType.SNAP:
                    self.on_snapshot_sent(m.to, False)

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            for p in self.peers.values():
                tg.create_task(p.run())

    async def close(self) -> None:
        for p in self.peers.values():
            await p.close()


class PeerReceiver:
    """Decodes inbound batches; rejects senders that are not members of our cluster."""

    def __init__(
        self, cluster_id: int, members: set[int], deliver: Callable[[list[Message]], None]
    ):
        self.cluster_id = cluster_id
        self.members = members
        self.deliver = deliver

    async def handle(
        self, batches: AsyncIterator[peer_pb2.MessageBatch], context: grpc.aio.ServicerContext
    ) -> peer_pb2.SendResponse:
        with contextlib.suppress(asyncio.CancelledError):  # the server is stopping
            await self._receive(batches, context)
        return peer_pb2.SendResponse()

    async def _receive(
        self, batches: AsyncIterator[peer_pb2.MessageBatch], context: grpc.aio.ServicerContext
    ) -> None:
        async for batch in batches:
            if batch.cluster_id != self.cluster_id:
                await context.abort(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"cluster ID mismatch: got {batch.cluster_id:x}, want {self.cluster_id:x}",
                )
            if batch.frm not in self.members:
                await context.abort(
                    grpc.StatusCode.PERMISSION_DENIED, f"unknown member {batch.frm:x}"
                )
            self.deliver([message_from_pb(p) for p in batch.messages])

"""Peer transport: one outbound gRPC client stream per peer, bounded queues.

Raft tolerates loss, so a full queue drops the message and reports the peer
unreachable (the leader then probes it instead of pipelining). A broken
stream is reopened with exponential backoff. Inbound batches are accepted only
from our cluster and never from a removed member. Peers are added and removed
at runtime as the membership changes. A MsgSnap leaves the message stream and
goes on a stream of its own in chunks, so a snapshot's size is not bounded by
the largest gRPC message and heartbeats keep flowing while it travels.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator

import grpc

from kvstore._pb.peerpb import peer_pb2, peer_pb2_grpc
from kvstore.raft.types import Message, MessageType, Snapshot
from kvstore.server.codec import message_from_pb, message_to_pb
from kvstore.server.config import TLSFiles, host_port
from kvstore.server.metrics import Metrics
from kvstore.server.tls import open_channel

log = logging.getLogger(__name__)

QUEUE_SIZE = 4096
"""Messages queued per peer before new ones are dropped."""
MAX_BATCH = 512
"""Messages per stream write."""
MAX_MESSAGE_BYTES = 256 * 1024 * 1024
SNAPSHOT_CHUNK_BYTES = 1024 * 1024
SNAPSHOT_MIN_RATE = 1024 * 1024
"""Bytes per second below which a snapshot transfer is abandoned (and retried by Raft)."""
SNAPSHOT_TIMEOUT_MIN = 30.0
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
MEMBER_REMOVED_MESSAGE = "the member has been permanently removed from the cluster"
"""etcd's words, sent to (and logged by) a member whose messages are refused after its removal."""
PEER_USER_AGENT = "kvstore-peer/"
"""Followed by the sender's member id (hex): every peer call names its sender, so a
proxy on the link (the chaos harness's fault proxy) can tell who is talking."""


def peer_channel_options(self_id: int) -> list[tuple[str, object]]:
    """Options of every channel a member opens to a peer (it names itself in the user agent)."""
    return [*GRPC_OPTIONS, ("grpc.primary_user_agent", f"{PEER_USER_AGENT}{self_id:x}")]


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
        self.url = url
        self.target = f"{host}:{port}"
        self.transport = transport
        self.queue: asyncio.Queue[Message] = asyncio.Queue(QUEUE_SIZE)
        self.channel: grpc.aio.Channel | None = None
        self.active_since: float | None = None
        """Monotonic time since which writes to this peer succeed (None: not connected)."""
        self.task: asyncio.Task[None] | None = None
        self.snapshot_task: asyncio.Task[None] | None = None

    def stub(self) -> peer_pb2_grpc.PeerStub:
        if self.channel is None:
            options = peer_channel_options(self.transport.self_id)
            self.channel = open_channel(self.url, self.transport.tls, options)
        return peer_pb2_grpc.PeerStub(self.channel)  # type: ignore[no-untyped-call]

    async def run(self) -> None:
        """Keep a stream open to the peer whether or not there is anything to send.

        As etcd's members do, every member holds a stream to every other one from the
        start: a member that becomes leader has then been connected to the others all
        along (the membership health check reads ``connected_since``), not only since
        its first message to them.
        """
        backoff = BACKOFF_MIN
        t = self.transport
        while True:
            call = self.stub().Send()
            try:
                # The opening batch names the sender; the peer checks it at once.
                await call.write(peer_pb2.MessageBatch(cluster_id=t.cluster_id, frm=t.self_id))
                self.active_since = time.monotonic()
                backoff = BACKOFF_MIN
                while True:
                    pending = [await self.queue.get()]
                    while len(pending) < MAX_BATCH and not self.queue.empty():
                        pending.append(self.queue.get_nowait())
                    batch = peer_pb2.MessageBatch(cluster_id=t.cluster_id, frm=t.self_id)
                    add = batch.messages.add
                    for m in pending:
                        if m.type == MessageType.SNAP:
                            self.start_snapshot(m)
                        else:
                            message_to_pb(m, add())
                    if batch.messages:
                        await call.write(batch)
            except (grpc.aio.AioRpcError, asyncio.InvalidStateError, grpc.aio.UsageError) as exc:
                log.debug("stream to peer %x broke: %s", self.id, exc)
                self.active_since = None
                if await _refused_as_removed(call, exc):
                    t.on_removed()
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

    def start_snapshot(self, m: Message) -> None:
        """Send a MsgSnap on its own stream; Raft hears the outcome through report_snapshot."""
        if self.snapshot_task is not None:
            self.snapshot_task.cancel()  # superseded: Raft sends one snapshot at a time
        self.snapshot_task = asyncio.create_task(self._send_snapshot(m))

    async def _send_snapshot(self, m: Message) -> None:
        t = self.transport
        assert m.snapshot is not None
        data = m.snapshot.data
        head = message_to_pb(dataclasses.replace(m, snapshot=Snapshot(m.snapshot.metadata, b"")))

        def chunks() -> Iterator[peer_pb2.SnapshotChunk]:
            yield peer_pb2.SnapshotChunk(
                cluster_id=t.cluster_id, frm=t.self_id, message=head, total_size=len(data)
            )
            view = memoryview(data)
            for offset in range(0, len(data), SNAPSHOT_CHUNK_BYTES):
                yield peer_pb2.SnapshotChunk(
                    data=bytes(view[offset : offset + SNAPSHOT_CHUNK_BYTES])
                )

        ok = False
        started = time.monotonic()
        try:
            await self.stub().SendSnapshot(
                chunks(), timeout=SNAPSHOT_TIMEOUT_MIN + len(data) / SNAPSHOT_MIN_RATE
            )
            ok = True
            log.info(
                "sent a %d-byte snapshot at index %d to %x in %.2f s",
                len(data),
                m.snapshot.metadata.index,
                self.id,
                time.monotonic() - started,
            )
        except grpc.aio.AioRpcError as exc:
            log.warning("sending a snapshot to %x failed: %s", self.id, exc.details())
        finally:
            counts = t.metrics.snapshot_send_success if ok else t.metrics.snapshot_send_failures
            counts[f"{self.id:x}"] = counts.get(f"{self.id:x}", 0) + 1
            t.on_snapshot_sent(self.id, ok)

    def connected_since(self) -> float | None:
        """Since when this peer has been reachable without a break (None: it is not now).

        The channel notices a peer that went away before our next write fails.
        """
        channel = self.channel
        if channel is None or channel.get_state() != grpc.ChannelConnectivity.READY:
            self.active_since = None
        return self.active_since

    async def close(self) -> None:
        if self.snapshot_task is not None:
            self.snapshot_task.cancel()
        if self.channel is not None:
            await self.channel.close(grace=None)


async def _refused_as_removed(call: grpc.aio.StreamUnaryCall, exc: Exception) -> bool:
    """Did the peer end the stream because we were removed from the cluster?"""
    if isinstance(exc, grpc.aio.AioRpcError):
        return bool(exc.details() == MEMBER_REMOVED_MESSAGE)
    # A write after the peer ended the call fails without its status: read it.
    if not call.done():
        return False
    return bool(await call.details() == MEMBER_REMOVED_MESSAGE)


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
        tls: TLSFiles | None = None,
    ) -> None:
        """``tls``: the peer certificate, key and CA used to dial https peers."""
        self.self_id = self_id
        self.tls = tls or TLSFiles(prefix="peer-")
        self.cluster_id = cluster_id
        self.metrics = metrics
        self.on_unreachable = on_unreachable
        self.on_snapshot_sent = on_snapshot
        self.peers = {pid: Peer(pid, url, self) for pid, url in peers.items() if pid != self_id}
        self.on_removed: Callable[[], None] = lambda: None
        """Called when a peer says this member was removed from the cluster."""
        self._tasks: asyncio.TaskGroup | None = None

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
            self._tasks = tg
            for p in self.peers.values():
                p.task = tg.create_task(p.run())
            await asyncio.Future()  # peers come and go until the transport is cancelled

    def add_peer(self, peer_id: int, url: str) -> None:
        """Start streaming to a member added at runtime (or to a member's new URL)."""
        if peer_id == self.self_id:
            return
        old = self.peers.get(peer_id)
        if old is not None:
            if old.url == url:
                return
            self.remove_peer(peer_id)
        peer = self.peers[peer_id] = Peer(peer_id, url, self)
        if self._tasks is not None:
            peer.task = self._tasks.create_task(peer.run())

    def remove_peer(self, peer_id: int) -> None:
        """Stop streaming to a removed member."""
        peer = self.peers.pop(peer_id, None)
        if peer is None:
            return
        if peer.task is not None:
            peer.task.cancel()
        if peer.channel is not None and self._tasks is not None:
            self._tasks.create_task(peer.close())

    async def close(self) -> None:
        for p in self.peers.values():
            await p.close()


class PeerReceiver:
    """Decodes inbound batches; rejects other clusters and members removed from ours.

    Like etcd, a sender this member does not know yet is accepted: it joined after
    the state applied here, and its entries are how this member learns of it.
    """

    def __init__(self, cluster_id: int, deliver: Callable[[list[Message]], None]):
        self.cluster_id = cluster_id
        self.removed: set[int] = set()
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
            await self._check_sender(batch.cluster_id, batch.frm, context)
            self.deliver([message_from_pb(p) for p in batch.messages])

    async def handle_snapshot(
        self, chunks: AsyncIterator[peer_pb2.SnapshotChunk], context: grpc.aio.ServicerContext
    ) -> peer_pb2.SendResponse:
        """Reassemble one chunked MsgSnap and deliver it whole."""
        head: peer_pb2.SnapshotChunk | None = None
        data = bytearray()
        async for chunk in chunks:
            if head is None:
                await self._check_sender(chunk.cluster_id, chunk.frm, context)
                head = chunk
            data += chunk.data
            if len(data) > head.total_size:
                break
        if head is None or len(data) != head.total_size:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"snapshot stream ended with {len(data)} of "
                f"{head.total_size if head else '?'} bytes",
            )
            raise AssertionError("unreachable")
        m = message_from_pb(head.message)
        assert m.snapshot is not None
        m.snapshot = Snapshot(m.snapshot.metadata, bytes(data))
        self.deliver([m])
        return peer_pb2.SendResponse()

    async def _check_sender(
        self, cluster_id: int, frm: int, context: grpc.aio.ServicerContext
    ) -> None:
        if cluster_id != self.cluster_id:
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"cluster ID mismatch: got {cluster_id:x}, want {self.cluster_id:x}",
            )
        if frm in self.removed:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, MEMBER_REMOVED_MESSAGE)

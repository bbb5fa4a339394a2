"""Peer transport: framed streams between members (:mod:`~kvstore.server.peerwire`).

Like etcd's, every member holds a connection to every other one from the
start, whatever their roles: a member that becomes leader has been connected
to the others all along (the membership health check asks since when). Raft
messages queue per peer (bounded: Raft tolerates loss, so a full queue drops
the message and reports the peer unreachable) and leave batched, many per
write. A broken connection is redialed with exponential backoff; a peer that
stops answering pings counts as gone. A MsgSnap travels in chunks on a
connection of its own, so heartbeats keep flowing meanwhile. Calls only the
leader answers (lease keep-alives, membership changes) travel on a third kind
of connection, multiplexed by call id.

Inbound, :class:`PeerListener` accepts only our cluster and never a member
removed from it; like etcd, a sender this member does not know yet is
accepted (it joined after the state applied here, and its entries are how
this member learns of it).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import itertools
import logging
import shutil
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from google.protobuf.message import DecodeError
from google.protobuf.message import Message as PbMessage

from kvstore._pb.peerpb import peer_pb2
from kvstore.errors import RemoteError
from kvstore.raft.types import Message, MessageType, Snapshot, SnapshotMetadata
from kvstore.rpc.status import StatusCode
from kvstore.server.codec import message_to_pb
from kvstore.server.config import TLSFiles, host_port, is_https
from kvstore.server.metrics import Metrics
from kvstore.server.peerwire import (
    MEMBER_REMOVED_MESSAGE,
    SNAP_HEAD,
    FrameKind,
    PeerMethod,
    StreamKind,
    WireError,
    call_frame,
    frame,
    hello,
    read_frame,
    send,
    split_call,
)
from kvstore.server.tls import peer_client_ssl_context

log = logging.getLogger(__name__)

R = TypeVar("R", bound=PbMessage)

SnapshotImage = Callable[[int], Awaitable[tuple[SnapshotMetadata, Path]]]
"""Makes a copy of the state for a peer: its Raft metadata and the file it is in (raises
:class:`SnapshotUnavailable` when there is none to make now)."""


class SnapshotUnavailable(Exception):
    """No snapshot can be made for a peer just now (Raft retries the send later)."""


QUEUE_MESSAGES = 4096
"""Messages queued per peer before new ones are dropped."""
MAX_BATCH_MESSAGES = 512
"""Messages per frame."""
WRITE_BUFFER_HIGH_BYTES = 4 * 1024 * 1024
"""Bytes a connection may have unsent before its writer waits for the socket."""
SNAPSHOT_CHUNK_BYTES = 1024 * 1024
SNAPSHOT_MIN_RATE_BYTES = 1024 * 1024
"""Bytes per second below which a snapshot transfer is abandoned (and retried by Raft)."""
SNAPSHOT_TIMEOUT_MIN_SECONDS = 30.0
CONNECT_TIMEOUT_SECONDS = 5.0
"""TCP connect (and TLS handshake) to a peer."""
PING_INTERVAL_SECONDS = 1.0
DEAD_AFTER_PINGS = 5
"""A peer that answers none of this many pings in a row is taken for gone."""
BACKOFF_MIN_SECONDS = 0.05
BACKOFF_MAX_SECONDS = 1.0


class PeerUnreachableError(Exception):
    """The peer could not be reached (or did not answer in time)."""


class RefusedError(PeerUnreachableError):
    """The peer refused our connection; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


async def _chunks(data: bytes, image: Path | None) -> AsyncIterator[bytes]:
    """A snapshot's data in chunks: from memory, or read from its file by a worker thread
    (a backend of gigabytes is never held in memory whole)."""
    if image is None:
        view = memoryview(data)
        for offset in range(0, len(data), SNAPSHOT_CHUNK_BYTES):
            yield bytes(view[offset : offset + SNAPSHOT_CHUNK_BYTES])
        return
    f = await asyncio.to_thread(image.open, "rb")
    try:
        while chunk := await asyncio.to_thread(f.read, SNAPSHOT_CHUNK_BYTES):
            yield chunk
    finally:
        f.close()


async def _dial(
    url: str, tls: TLSFiles, cluster_id: int, self_id: int, kind: StreamKind
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Open a connection to the member at ``url`` and say who we are.

    Nothing waits for the peer's ACCEPT: what the connection carries follows the
    hello at once, and the reader of the connection's answers meets the ACCEPT
    (or a REFUSE) first.
    """
    host, port = host_port(url)
    context = peer_client_ssl_context(tls) if is_https(url) else None
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(
                host, port, ssl=context, server_hostname=host if context else None
            ),
            CONNECT_TIMEOUT_SECONDS,
        )
    except (OSError, TimeoutError, ssl.SSLError) as exc:
        raise PeerUnreachableError(f"dial {url}: {exc}") from None
    send(writer, hello(cluster_id, self_id, kind))
    return reader, writer


def _retrieved(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()


def _refused(payload: bytes) -> RefusedError:
    return RefusedError(payload.decode("utf-8", "replace"))


class _Calls:
    """Calls on one connection, multiplexed by call id."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[tuple[int, bytes]]] = {}
        self.closed = False

    async def read_replies(self) -> None:
        error: PeerUnreachableError = PeerUnreachableError("calls connection closed")
        try:
            while True:
                kind, payload = await read_frame(self.reader)
                if kind == FrameKind.REFUSE:
                    error = _refused(payload)
                    return
                if kind != FrameKind.REPLY:
                    continue  # the ACCEPT
                call_id, status, body = split_call(payload)
                fut = self._waiting.pop(call_id, None)
                if fut is not None and not fut.done():
                    fut.set_result((status, body))
        except (WireError, OSError, ssl.SSLError):
            pass
        finally:
            self.close(error)

    async def call(self, method: PeerMethod, request: bytes, timeout: float) -> tuple[int, bytes]:
        if self.closed:
            raise PeerUnreachableError("calls connection closed")
        call_id = next(self._ids)
        fut: asyncio.Future[tuple[int, bytes]] = asyncio.get_running_loop().create_future()
        self._waiting[call_id] = fut
        try:
            send(self.writer, call_frame(call_id, method, request))
            return await asyncio.wait_for(fut, timeout)
        except OSError as exc:
            self.close()
            raise PeerUnreachableError(f"calls connection: {exc}") from None
        except TimeoutError:
            raise PeerUnreachableError(f"no answer to {method.name} in {timeout} s") from None
        finally:
            self._waiting.pop(call_id, None)

    def close(self, error: PeerUnreachableError | None = None) -> None:
        if self.closed:
            return
        self.closed = True
        self.writer.close()
        for fut in self._waiting.values():
            if not fut.done():
                fut.set_exception(error or PeerUnreachableError("calls connection closed"))
        self._waiting.clear()


def _decode_reply(status: int, body: bytes, response_type: type[R]) -> R:
    if status != StatusCode.OK:
        raise RemoteError(status, body.decode("utf-8", "replace"))
    try:
        return response_type.FromString(body)
    except DecodeError as exc:
        raise PeerUnreachableError(f"bad reply: {exc}") from None


async def call_url(
    url: str,
    tls: TLSFiles,
    cluster_id: int,
    self_id: int,
    method: PeerMethod,
    request: PbMessage,
    response_type: type[R],
    timeout: float,
) -> R:
    """One call on a connection of its own (a membership change may remove the member
    we talk to, and our connections to it, before its answer arrives)."""
    reader, writer = await _dial(url, tls, cluster_id, self_id, StreamKind.CALLS)
    calls = _Calls(reader, writer)
    replies = asyncio.ensure_future(calls.read_replies())
    try:
        status, body = await calls.call(method, request.SerializeToString(), timeout)
    finally:
        calls.close()
        replies.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await replies
    return _decode_reply(status, body, response_type)


class Peer:
    """Everything this member sends to one peer."""

    def __init__(self, peer_id: int, url: str, transport: Transport) -> None:
        self.id = peer_id
        self.url = url
        self.transport = transport
        self.queue: collections.deque[Message] = collections.deque()
        self._queued = asyncio.Event()
        self.active_since: float | None = None
        """Monotonic time since which our connection to the peer has been up (None: down)."""
        self.task: asyncio.Task[None] | None = None
        self.snapshot_task: asyncio.Task[None] | None = None
        self._calls: _Calls | None = None
        self._calls_lock = asyncio.Lock()
        self._writer: asyncio.StreamWriter | None = None
        """The messages connection while it is up: the raft loop writes to it directly."""

    def connected_since(self) -> float | None:
        """Since when this peer has been reachable without a break (None: it is not now)."""
        return self.active_since

    def enqueue(self, m: Message) -> bool:
        if len(self.queue) >= QUEUE_MESSAGES:
            return False
        self.queue.append(m)
        self._queued.set()
        return True

    def write_now(self) -> None:
        """Write what is queued straight to the connection, when it is up and keeps up.

        The raft loop calls this after each Ready: its appends and heartbeats reach
        the socket without waiting for this peer's task to get a turn of the loop
        (a busy loop would delay them by a turn each). What is left (the connection
        is down or backed up) the peer's task writes.
        """
        writer = self._writer
        if (
            writer is not None
            and self.queue
            and not writer.is_closing()
            and writer.transport.get_write_buffer_size() <= WRITE_BUFFER_HIGH_BYTES
        ):
            self._write_batch(writer)

    async def run(self) -> None:
        """Keep the messages connection up and write what is queued, many per frame."""
        t = self.transport
        backoff = BACKOFF_MIN_SECONDS
        while True:
            try:
                reader, writer = await _dial(
                    self.url, t.tls, t.cluster_id, t.self_id, StreamKind.MESSAGES
                )
            except PeerUnreachableError as exc:
                self._broken(exc)
                await asyncio.sleep(backoff)
                backoff = min(BACKOFF_MAX_SECONDS, 2 * backoff)
                continue
            try:
                await self._stream(reader, writer)
            except (OSError, WireError, ssl.SSLError, PeerUnreachableError) as exc:
                self._broken(exc)
                if self.active_since is None:  # refused or dead before it accepted us
                    await asyncio.sleep(backoff)
                    backoff = min(BACKOFF_MAX_SECONDS, 2 * backoff)
                else:
                    backoff = BACKOFF_MIN_SECONDS
            finally:
                writer.close()
                self.active_since = None

    async def _stream(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        pongs = asyncio.ensure_future(self._watch_pongs(reader))
        pongs.add_done_callback(_retrieved)  # whatever ends the connection ends it for both
        self._writer = writer
        try:
            next_ping = 0.0
            while not pongs.done():
                now = time.monotonic()
                if now >= next_ping:
                    send(writer, frame(FrameKind.PING))
                    next_ping = now + PING_INTERVAL_SECONDS
                if self.queue:
                    self._write_batch(writer)
                    if writer.transport.get_write_buffer_size() > WRITE_BUFFER_HIGH_BYTES:
                        await writer.drain()
                    continue
                self._queued.clear()
                waiter = asyncio.ensure_future(self._queued.wait())
                await asyncio.wait(
                    [waiter, pongs],
                    timeout=max(0.0, next_ping - time.monotonic()),
                    return_when=asyncio.FIRST_COMPLETED,
                )
                waiter.cancel()
            pongs.result()  # raises what ended the connection
        finally:
            self._writer = None
            pongs.cancel()

    async def _watch_pongs(self, reader: asyncio.StreamReader) -> None:
        """Read the peer's answers: its ACCEPT (we are connected from then on), then the
        answers to our pings; end when it falls silent or refuses us."""
        silence = DEAD_AFTER_PINGS * PING_INTERVAL_SECONDS
        while True:
            try:
                kind, payload = await asyncio.wait_for(read_frame(reader), silence)
            except TimeoutError:
                raise PeerUnreachableError(f"peer {self.id:x} stopped answering") from None
            if kind == FrameKind.ACCEPT:
                self.active_since = time.monotonic()
            elif kind == FrameKind.REFUSE:
                refused = _refused(payload)
                if refused.reason == MEMBER_REMOVED_MESSAGE:
                    self.transport.on_removed()
                raise refused

    def _write_batch(self, writer: asyncio.StreamWriter) -> None:
        batch = peer_pb2.MessageBatch()
        add = batch.messages.add
        queue = self.queue
        n = 0
        while queue and n < MAX_BATCH_MESSAGES:
            m = queue.popleft()
            if m.type == MessageType.SNAP:
                self.start_snapshot(m)
            else:
                message_to_pb(m, add())
                n += 1
        if n:
            send(writer, frame(FrameKind.MESSAGES, batch.SerializeToString()))

    def _broken(self, exc: BaseException) -> None:
        t = self.transport
        if self.active_since is not None:
            log.debug("connection to peer %x broke: %s", self.id, exc)
        self.active_since = None
        key = f"{self.id:x}"
        t.metrics.peer_sent_failures[key] = t.metrics.peer_sent_failures.get(key, 0) + 1
        t.on_unreachable(self.id)
        # Drop what is queued: Raft retransmits what matters.
        while self.queue:
            m = self.queue.popleft()
            if m.type == MessageType.SNAP:
                t.on_snapshot_sent(self.id, False)

    def start_snapshot(self, m: Message) -> None:
        """Send a MsgSnap on a connection of its own; Raft hears the outcome."""
        if self.snapshot_task is not None:
            self.snapshot_task.cancel()  # superseded: Raft sends one snapshot at a time
        self.snapshot_task = self.transport.spawn(self._send_snapshot(m))

    async def _send_snapshot(self, m: Message) -> None:
        t = self.transport
        assert m.snapshot is not None
        meta, data = m.snapshot.metadata, m.snapshot.data
        image: Path | None = None
        ok = False
        started = time.monotonic()
        try:
            if not data and t.snapshot_image is not None:
                # Raft's snapshots hold no data: the state goes as a copy made now.
                meta, image = await t.snapshot_image(self.id)
                size = image.stat().st_size
            else:
                size = len(data)
            head = message_to_pb(dataclasses.replace(m, snapshot=Snapshot(meta, b"")))
            timeout = SNAPSHOT_TIMEOUT_MIN_SECONDS + size / SNAPSHOT_MIN_RATE_BYTES
            reader, writer = await _dial(
                self.url, t.tls, t.cluster_id, t.self_id, StreamKind.SNAPSHOT
            )
            try:
                async with asyncio.timeout(timeout):
                    send(
                        writer,
                        frame(
                            FrameKind.SNAP_HEAD,
                            SNAP_HEAD.pack(size) + head.SerializeToString(),
                        ),
                    )
                    async for chunk in _chunks(data, image):
                        send(writer, frame(FrameKind.SNAP_DATA, chunk))
                        await writer.drain()
                    kind, payload = await read_frame(reader)
                    if kind == FrameKind.ACCEPT:
                        kind, payload = await read_frame(reader)
                if kind == FrameKind.REFUSE:
                    raise _refused(payload)
                if kind != FrameKind.SNAP_DONE or payload:
                    raise PeerUnreachableError(payload.decode("utf-8", "replace") or kind.name)
                ok = True
            finally:
                writer.close()
            log.info(
                "sent a %d-byte snapshot at index %d to %x in %.2f s",
                size,
                meta.index,
                self.id,
                time.monotonic() - started,
            )
        except (
            PeerUnreachableError,
            OSError,
            WireError,
            TimeoutError,
            ssl.SSLError,
            SnapshotUnavailable,
        ) as exc:
            log.warning("sending a snapshot to %x failed: %s", self.id, exc)
        finally:
            if image is not None:
                shutil.rmtree(image.parent, ignore_errors=True)
            counts = t.metrics.snapshot_send_success if ok else t.metrics.snapshot_send_failures
            counts[f"{self.id:x}"] = counts.get(f"{self.id:x}", 0) + 1
            t.on_snapshot_sent(self.id, ok)

    async def call(
        self, method: PeerMethod, request: PbMessage, response_type: type[R], timeout: float
    ) -> R:
        """A call only this peer (the leader) can answer, on the shared calls connection."""
        t = self.transport
        async with self._calls_lock:
            calls = self._calls
            if calls is None or calls.closed:
                reader, writer = await _dial(
                    self.url, t.tls, t.cluster_id, t.self_id, StreamKind.CALLS
                )
                calls = self._calls = _Calls(reader, writer)
                t.spawn(calls.read_replies())
        status, body = await calls.call(method, request.SerializeToString(), timeout)
        return _decode_reply(status, body, response_type)

    def close(self) -> None:
        for task in (self.task, self.snapshot_task):
            if task is not None:
                task.cancel()
        if self._calls is not None:
            self._calls.close()


class Transport:
    """All outbound peers. ``run()`` owns every task the transport starts."""

    def __init__(
        self,
        self_id: int,
        cluster_id: int,
        peers: dict[int, str],
        metrics: Metrics,
        on_unreachable: Callable[[int], None],
        on_snapshot: Callable[[int, bool], None],
        tls: TLSFiles | None = None,
        snapshot_image: SnapshotImage | None = None,
    ) -> None:
        """``tls``: the peer certificate, key and CA used to dial https peers.
        ``snapshot_image``: makes the state a MsgSnap without data carries (for the peer)."""
        self.self_id = self_id
        self.snapshot_image = snapshot_image
        self.cluster_id = cluster_id
        self.tls = tls or TLSFiles(prefix="peer-")
        self.metrics = metrics
        self.on_unreachable = on_unreachable
        self.on_snapshot_sent = on_snapshot
        self.peers = {pid: Peer(pid, url, self) for pid, url in peers.items() if pid != self_id}
        self.on_removed: Callable[[], None] = lambda: None
        """Called when a peer says this member was removed from the cluster."""
        self._tasks: asyncio.TaskGroup | None = None

    def send(self, msgs: list[Message]) -> None:
        """Hand messages to their peers (called by the raft loop; never blocks): written at
        once where the connection keeps up, else queued for the peer's task."""
        peers = self.peers
        touched: dict[int, Peer] = {}
        for m in msgs:
            p = peers.get(m.to)
            if p is None:
                continue
            if p.enqueue(m):
                touched[m.to] = p
            else:
                self.on_unreachable(m.to)
                if m.type == MessageType.SNAP:
                    self.on_snapshot_sent(m.to, False)
        for p in touched.values():
            p.write_now()

    def spawn(self, work: Awaitable[None]) -> asyncio.Task[None]:
        """Run ``work`` in the transport's task group (it ends with the transport)."""
        assert self._tasks is not None, "the transport is not running"
        return self._tasks.create_task(work)  # type: ignore[arg-type]

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            self._tasks = tg
            for p in self.peers.values():
                p.task = tg.create_task(p.run())
            await asyncio.Future()  # peers come and go until the transport is cancelled

    def add_peer(self, peer_id: int, url: str) -> None:
        """Connect to a member added at runtime (or to a member's new URL)."""
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
        """Stop talking to a removed member."""
        peer = self.peers.pop(peer_id, None)
        if peer is not None:
            peer.close()

    async def call(
        self,
        peer_id: int,
        method: PeerMethod,
        request: PbMessage,
        response_type: type[R],
        timeout: float,
    ) -> R:
        peer = self.peers.get(peer_id)
        if peer is None:
            raise PeerUnreachableError(f"no connection to {peer_id:x}")
        return await peer.call(method, request, response_type, timeout)

    async def close(self) -> None:
        for p in self.peers.values():
            p.close()

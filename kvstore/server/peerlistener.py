"""The inbound side of the peer transport: members' connections, accepted and served.

A connection's hello names what it carries (:mod:`~kvstore.server.peerwire`):
Raft messages, delivered to the raft loop as they arrive; one chunked
snapshot, reassembled and delivered whole; or calls only the leader answers,
each answered by its own task so that a slow one does not hold the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import ssl
from collections.abc import Awaitable, Callable
from typing import Any

from google.protobuf.message import DecodeError
from google.protobuf.message import Message as PbMessage

from kvstore._pb.peerpb import peer_pb2
from kvstore.errors import RequestError
from kvstore.raft.types import Message, Snapshot
from kvstore.rpc.status import StatusCode
from kvstore.server.codec import message_from_pb
from kvstore.server.config import TLSFiles, host_port, is_https
from kvstore.server.peerwire import (
    MEMBER_REMOVED_MESSAGE,
    SNAP_HEAD,
    FrameKind,
    PeerMethod,
    StreamKind,
    WireError,
    frame,
    read_frame,
    read_hello,
    reply_frame,
    send,
    split_call,
)
from kvstore.server.status import to_status
from kvstore.server.tls import http_ssl_context

log = logging.getLogger(__name__)

HELLO_TIMEOUT_SECONDS = 10.0
"""How long a listener waits for a new connection's hello."""

Deliver = Callable[[list[Message]], None]
CallHandler = Callable[[Any], Awaitable[PbMessage]]


@dataclasses.dataclass(frozen=True)
class CallSpec:
    """A peer call's request type and the function that answers it."""

    request_type: type[PbMessage]
    handler: CallHandler


class PeerListener:
    """Accepts members' connections: their messages, snapshots and calls."""

    def __init__(self, cluster_id: int, deliver: Deliver) -> None:
        self.cluster_id = cluster_id
        self.removed: set[int] = set()
        self.deliver = deliver
        self.calls: dict[PeerMethod, CallSpec] = {}
        """What this member answers; set by the server."""
        self._servers: list[asyncio.Server] = []
        self._handlers: set[asyncio.Task[None]] = set()

    async def listen(self, url: str, tls: TLSFiles) -> None:
        host, port = host_port(url)
        context = http_ssl_context(tls) if is_https(url) else None
        server = await asyncio.start_server(
            self._accept, host, port, ssl=context, reuse_address=True
        )
        self._servers.append(server)

    async def close(self) -> None:
        for server in self._servers:
            server.close()
        for task in list(self._handlers):
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        for server in self._servers:
            with contextlib.suppress(Exception):
                await server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            cluster_id, sender, kind = await asyncio.wait_for(
                read_hello(reader), HELLO_TIMEOUT_SECONDS
            )
            refusal = self._refusal(cluster_id, sender, kind)
            if refusal:
                send(writer, frame(FrameKind.REFUSE, refusal.encode()))
                await writer.drain()
                return
            send(writer, frame(FrameKind.ACCEPT))
            if kind == StreamKind.MESSAGES:
                await self._messages(sender, reader, writer)
            elif kind == StreamKind.SNAPSHOT:
                await self._snapshot(reader, writer)
            else:
                await self._calls(reader, writer, cluster_id == 0)
        except (WireError, OSError, TimeoutError, ssl.SSLError, DecodeError) as exc:
            log.debug("peer connection ended: %s", exc)
        except asyncio.CancelledError:
            pass
        finally:
            self._handlers.discard(task)
            writer.close()

    def _refusal(self, cluster_id: int, sender: int, kind: StreamKind) -> str:
        if cluster_id == 0 and kind == StreamKind.CALLS:
            return ""  # a member joining the cluster asks who is in it
        if cluster_id != self.cluster_id:
            return f"cluster ID mismatch: got {cluster_id:x}, want {self.cluster_id:x}"
        if sender in self.removed:
            return MEMBER_REMOVED_MESSAGE
        return ""

    async def _messages(
        self, sender: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        deliver = self.deliver
        while True:
            kind, payload = await read_frame(reader)
            if sender in self.removed:  # removed since it connected: tell it, and hang up
                send(writer, frame(FrameKind.REFUSE, MEMBER_REMOVED_MESSAGE.encode()))
                await writer.drain()
                return
            if kind == FrameKind.MESSAGES:
                batch = peer_pb2.MessageBatch.FromString(payload)
                deliver([message_from_pb(p) for p in batch.messages])
            elif kind == FrameKind.PING:
                send(writer, frame(FrameKind.PONG))

    async def _snapshot(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Reassemble one chunked MsgSnap and deliver it whole."""
        kind, payload = await read_frame(reader)
        if kind != FrameKind.SNAP_HEAD or len(payload) < SNAP_HEAD.size:
            raise WireError("a snapshot connection starts with its head")
        (total,) = SNAP_HEAD.unpack_from(payload)
        head = peer_pb2.Message.FromString(payload[SNAP_HEAD.size :])
        data = bytearray()
        while len(data) < total:
            kind, chunk = await read_frame(reader)
            if kind != FrameKind.SNAP_DATA or len(data) + len(chunk) > total:
                send(writer, frame(FrameKind.SNAP_DONE, b"snapshot data past its declared size"))
                return
            data += chunk
        m = message_from_pb(head)
        assert m.snapshot is not None
        m.snapshot = Snapshot(m.snapshot.metadata, bytes(data))
        self.deliver([m])
        send(writer, frame(FrameKind.SNAP_DONE))
        await writer.drain()

    async def _calls(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, outsider: bool
    ) -> None:
        answering: set[asyncio.Task[None]] = set()
        try:
            while True:
                kind, payload = await read_frame(reader)
                if kind != FrameKind.CALL:
                    continue
                call_id, method, body = split_call(payload)
                task = asyncio.ensure_future(self._answer(writer, call_id, method, body, outsider))
                answering.add(task)
                task.add_done_callback(answering.discard)
        finally:
            for task in answering:
                task.cancel()

    async def _answer(
        self, writer: asyncio.StreamWriter, call_id: int, method: int, body: bytes, outsider: bool
    ) -> None:
        with contextlib.suppress(OSError):  # the caller went away: nobody to answer
            await self._answer_call(writer, call_id, method, body, outsider)

    async def _answer_call(
        self, writer: asyncio.StreamWriter, call_id: int, method: int, body: bytes, outsider: bool
    ) -> None:
        try:
            spec = self.calls.get(PeerMethod(method))
        except ValueError:
            spec = None
        if spec is None or (outsider and method != PeerMethod.MEMBER_LIST):
            send(writer, reply_frame(call_id, StatusCode.UNIMPLEMENTED, b"unknown peer call"))
            return
        try:
            response = await spec.handler(spec.request_type.FromString(body))
        except RequestError as exc:
            code, message = to_status(exc)
            send(writer, reply_frame(call_id, code, message.encode()))
            return
        except DecodeError as exc:
            send(writer, reply_frame(call_id, StatusCode.INTERNAL, str(exc).encode()))
            return
        send(writer, reply_frame(call_id, StatusCode.OK, response.SerializeToString()))

"""Our gRPC server's HTTP/2, driven by a strict client (the ``h2`` library) over a socket:
flow control both ways, CONTINUATION, PING, resets, deadlines, limits, header caching."""

from __future__ import annotations

import asyncio
import gc
import socket
import weakref
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.events
import hpack
import pytest

from kvstore._pb.etcdserverpb import rpc_pb2
from kvstore.ports import free_ports
from kvstore.rpc import CallContext, Cardinality, Method, RpcError, Server, StatusCode
from kvstore.rpc.http2 import Http2Connection, Http2Limits

PATH = "/etcdserverpb.KV/Range"
MAX_RECEIVE = 64 * 1024
BIG = 300_000
"""Response bytes: several times the client's default 64 KiB window."""


@dataclass
class Seen:
    metadata: list[dict[str, str]] = field(default_factory=list)
    started: asyncio.Event = field(default_factory=asyncio.Event)
    cancelled: asyncio.Event = field(default_factory=asyncio.Event)
    watching: asyncio.Event = field(default_factory=asyncio.Event)
    handler_tasks: list[weakref.ref[asyncio.Task[None]]] = field(default_factory=list)


def _methods(seen: Seen) -> dict[str, Method]:
    async def range_(req: rpc_pb2.RangeRequest, ctx: CallContext) -> rpc_pb2.RangeResponse:
        seen.metadata.append(dict(ctx.metadata))
        if req.key == b"slow":
            seen.handler_tasks.append(weakref.ref(_current_task()))
            seen.started.set()
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                seen.cancelled.set()
                raise
        if req.key == b"error":
            raise RpcError(StatusCode.NOT_FOUND, "no such thing: 100%")
        resp = rpc_pb2.RangeResponse(count=1)
        if req.key == b"big":
            resp.kvs.add(key=b"big", value=b"v" * BIG)
        return resp

    async def watch(
        requests: AsyncIterator[rpc_pb2.WatchRequest], ctx: CallContext
    ) -> AsyncIterator[rpc_pb2.WatchResponse]:
        seen.handler_tasks.append(weakref.ref(_current_task()))
        seen.watching.set()
        async for r in requests:
            yield rpc_pb2.WatchResponse(watch_id=r.create_request.watch_id, created=True)

    return {
        PATH: Method(rpc_pb2.RangeRequest, range_),
        "/etcdserverpb.Watch/Watch": Method(rpc_pb2.WatchRequest, watch, Cardinality.BIDI_STREAM),
    }


def _current_task() -> asyncio.Task[None]:
    task = asyncio.current_task()
    assert task is not None
    return task


@pytest.fixture
async def served() -> AsyncIterator[tuple[int, Seen]]:
    seen = Seen()
    server = Server(_methods(seen), max_receive_bytes=MAX_RECEIVE)
    (port,) = free_ports(1)
    await server.listen("127.0.0.1", port)
    yield port, seen
    await server.stop()


class Client:
    """A blocking h2 client on a socket (run in a thread)."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
        )
        self.conn.initiate_connection()
        self.flush()

    def flush(self) -> None:
        self.sock.sendall(self.conn.data_to_send())

    def close(self) -> None:
        self.sock.close()

    def headers(
        self, path: str = PATH, extra: list[tuple[str, str]] | None = None
    ) -> list[tuple[str, str]]:
        return [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", path),
            (":authority", "127.0.0.1"),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
            *(extra or []),
        ]

    def start(self, path: str = PATH, extra: list[tuple[str, str]] | None = None) -> int:
        sid = self.conn.get_next_available_stream_id()
        self.conn.send_headers(sid, self.headers(path, extra))
        self.flush()
        return sid

    def send(self, sid: int, message: bytes, end: bool) -> None:
        self.conn.send_data(sid, len(message).to_bytes(5, "big") + message, end_stream=end)
        self.flush()

    def events(self) -> Iterator[h2.events.Event]:
        while True:
            data = self.sock.recv(65536)
            if not data:
                return
            for event in self.conn.receive_data(data):
                if isinstance(event, h2.events.DataReceived):
                    # Read as slowly as the window lets us: acknowledge what we consumed.
                    self.conn.acknowledge_received_data(
                        event.flow_controlled_length, event.stream_id
                    )
                yield event
            self.flush()

    def call(
        self, request: bytes, extra: list[tuple[str, str]] | None = None
    ) -> tuple[bytes, dict[str, str]]:
        """A unary call: (response message bytes, trailers)."""
        sid = self.start(extra=extra)
        self.send(sid, request, end=True)
        body, trailers = self.finish(sid)
        return body[5:], trailers

    def finish(self, sid: int) -> tuple[bytes, dict[str, str]]:
        """(the response bytes as framed, trailers)."""
        body = b""
        trailers: dict[str, str] = {}
        for event in self.events():
            if isinstance(event, h2.events.DataReceived) and event.stream_id == sid:
                body += event.data
            heads = (h2.events.TrailersReceived, h2.events.ResponseReceived)
            if isinstance(event, heads) and event.stream_id == sid:
                trailers.update({str(k): str(v) for k, v in event.headers})
            if isinstance(event, h2.events.StreamEnded) and event.stream_id == sid:
                break
        return body, trailers


def _range(key: bytes) -> bytes:
    return rpc_pb2.RangeRequest(key=key).SerializeToString()


async def test_a_big_response_waits_for_the_clients_window(served: tuple[int, Seen]) -> None:
    port, _ = served

    def run() -> rpc_pb2.RangeResponse:
        c = Client(port)
        try:
            body, trailers = c.call(_range(b"big"))
        finally:
            c.close()
        assert trailers["grpc-status"] == "0"
        return rpc_pb2.RangeResponse.FromString(body)

    resp = await asyncio.to_thread(run)
    assert len(resp.kvs[0].value) == BIG


async def test_errors_unknown_methods_and_limits(served: tuple[int, Seen]) -> None:
    port, _ = served

    def run() -> list[tuple[str, str]]:
        c = Client(port)
        try:
            out = []
            _, t = c.call(_range(b"error"))
            out.append((t["grpc-status"], t["grpc-message"]))
            sid = c.start("/etcdserverpb.KV/Nope")
            c.send(sid, b"", end=True)
            _, t = c.finish(sid)
            out.append((t["grpc-status"], t["grpc-message"]))
            too_big = rpc_pb2.RangeRequest(key=b"x" * (MAX_RECEIVE + 1)).SerializeToString()
            _, t = c.call(too_big)
            out.append((t["grpc-status"], t["grpc-message"]))
            return out
        finally:
            c.close()

    assert await asyncio.to_thread(run) == [
        (str(StatusCode.NOT_FOUND.value), "no such thing: 100%25"),
        (str(StatusCode.UNIMPLEMENTED.value), "unknown method Nope for service etcdserverpb.KV"),
        (
            str(StatusCode.RESOURCE_EXHAUSTED.value),
            # The size the message declares, as gRPC says, however much of it had arrived.
            f"grpc: received message larger than max ({MAX_RECEIVE + 5} vs. {MAX_RECEIVE})",
        ),
    ]


async def test_headers_in_continuation_frames_and_a_ping(served: tuple[int, Seen]) -> None:
    port, seen = served

    def run() -> bool:
        c = Client(port)
        try:
            c.conn.max_outbound_frame_size = 16384
            # A header list longer than one frame: h2 splits it into HEADERS + CONTINUATION.
            _, t = c.call(_range(b"a"), extra=[("x-long", "y" * 40_000)])
            assert t["grpc-status"] == "0"
            c.conn.ping(b"12345678")
            c.flush()
            return any(isinstance(e, h2.events.PingAckReceived) for e in _until_ping(c))
        finally:
            c.close()

    assert await asyncio.to_thread(run)
    assert seen.metadata[-1]["x-long"] == "y" * 40_000


def _until_ping(c: Client) -> Iterator[h2.events.Event]:
    for event in c.events():
        yield event
        if isinstance(event, h2.events.PingAckReceived):
            return


async def test_metadata_is_right_whatever_the_header_table_holds(served: tuple[int, Seen]) -> None:
    """Repeated blocks are decoded once; a block that changes the table must not let
    a stale decoding stand for the same bytes later."""
    port, seen = served

    def run() -> None:
        c = Client(port)
        try:
            for token in ["a", "a", "b", "a", "b", "b", "c", "a"]:
                _, t = c.call(_range(b"k"), extra=[("token", token)])
                assert t["grpc-status"] == "0"
        finally:
            c.close()

    await asyncio.to_thread(run)
    assert [m["token"] for m in seen.metadata] == ["a", "a", "b", "a", "b", "b", "c", "a"]


async def test_a_reset_cancels_the_handler_and_a_deadline_ends_the_call(
    served: tuple[int, Seen],
) -> None:
    port, seen = served

    c = Client(port)
    try:
        sid = c.start()
        c.send(sid, _range(b"slow"), end=True)
        await asyncio.wait_for(seen.started.wait(), 30)
        c.conn.reset_stream(sid)
        c.flush()
        await asyncio.wait_for(seen.cancelled.wait(), 30)
    finally:
        c.close()

    def deadline() -> dict[str, str]:
        c = Client(port)
        try:
            _, t = c.call(_range(b"slow"), extra=[("grpc-timeout", "200m")])
            return t
        finally:
            c.close()

    trailers = await asyncio.to_thread(deadline)
    assert trailers["grpc-status"] == str(StatusCode.DEADLINE_EXCEEDED.value)


async def test_a_bidirectional_stream(served: tuple[int, Seen]) -> None:
    port, _ = served

    def run() -> list[int]:
        c = Client(port)
        try:
            sid = c.start("/etcdserverpb.Watch/Watch")
            for i in range(1, 4):
                create = rpc_pb2.WatchCreateRequest(key=b"k", watch_id=i)
                c.send(sid, rpc_pb2.WatchRequest(create_request=create).SerializeToString(), i == 3)
            body, trailers = c.finish(sid)
        finally:
            c.close()
        assert trailers["grpc-status"] == "0"
        ids = []
        while body:
            size = int.from_bytes(body[1:5], "big")
            ids.append(rpc_pb2.WatchResponse.FromString(body[5 : 5 + size]).watch_id)
            body = body[5 + size :]
        return ids

    assert await asyncio.to_thread(run) == [1, 2, 3]


async def test_the_same_block_after_the_table_changed_is_decoded_again() -> None:
    """After an entry is added, the same bytes (an index) name another header."""
    conn = Http2Connection(
        Http2Limits(max_concurrent_streams=10, stream_window=65535, connection_window=65535)
    )
    encoder = hpack.Encoder()
    seen = []
    for token in ["a", "a", "b", "b"]:
        block = encoder.encode([("token", token)])
        seen.append((block, conn._decode_headers(block)["token"]))
    assert seen[1][0] == seen[3][0], "the test needs the same bytes to mean two things"
    assert [token for _, token in seen] == ["a", "a", "b", "b"]


async def test_a_reset_call_is_freed_without_the_cycle_collector(served: tuple[int, Seen]) -> None:
    """A cancelled handler's traceback holds its frames and they the call: the call must
    not hold the handler's task still, or every cancelled stream (a closed watch) is a
    cycle of ~55 objects left for the collector. With the collector off, the cancelled
    handlers' tasks (a bidirectional stream's and a unary call's) are freed anyway."""
    port, seen = served
    gc.collect()
    gc.disable()
    try:
        c = Client(port)
        try:
            sid = c.start("/etcdserverpb.Watch/Watch")
            create = rpc_pb2.WatchCreateRequest(key=b"k", watch_id=1)
            c.send(sid, rpc_pb2.WatchRequest(create_request=create).SerializeToString(), False)
            await asyncio.wait_for(seen.watching.wait(), 30)
            unary = c.start()
            c.send(unary, _range(b"slow"), end=True)
            await asyncio.wait_for(seen.started.wait(), 30)
            freed = [asyncio.Event(), asyncio.Event()]
            for ref, event in zip(seen.handler_tasks, freed, strict=True):
                weakref.finalize(ref(), event.set)
            c.conn.reset_stream(sid)
            c.conn.reset_stream(unary)
            c.flush()
            await asyncio.wait_for(seen.cancelled.wait(), 30)
            await asyncio.wait_for(asyncio.gather(*(e.wait() for e in freed)), 30)
        finally:
            c.close()
    finally:
        gc.enable()

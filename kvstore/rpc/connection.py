"""gRPC calls on an HTTP/2 connection: messages, handlers, status.

What it implements of gRPC: length-prefixed messages (uncompressed),
``grpc-timeout`` deadlines, metadata, trailers and trailers-only responses
with ``grpc-status``/``grpc-message``, cancellation by RST_STREAM, a receive
size limit (RESOURCE_EXHAUSTED, as grpc-go words it). A streaming handler's
unread requests hold back the client's window, so it cannot buffer without
bound; its responses wait when the client reads slowly.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Coroutine
from typing import Any, Protocol

from google.protobuf.message import DecodeError, Message

from kvstore.rpc import frames as fr
from kvstore.rpc.call import CallContext, Cardinality, ErrorMapper, Method
from kvstore.rpc.http2 import Http2Connection, Http2Limits, Stream
from kvstore.rpc.status import RpcError, StatusCode
from kvstore.rpc.turns import StreamTurns
from kvstore.rpc.wiretypes import decode_strictly

REQUEST_QUEUE_MESSAGES = 1024
"""Decoded requests a streaming handler may leave unread: past it the client's window
is not replenished, so it stops sending."""
_TIMEOUT_UNITS = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}
_MESSAGE_PREFIX_BYTES = 5  # compressed flag, then the length (big endian)


class Call(Stream):
    """One stream carrying one gRPC call."""

    __slots__ = (
        "body",
        "ctx",
        "inbox",
        "inbox_sizes",
        "inbox_waiter",
        "method",
        "requests_failed",
        "task",
        "timer",
    )

    def __init__(self, stream_id: int, send_window: int) -> None:
        super().__init__(stream_id, send_window)
        self.method: Method | None = None
        self.ctx: CallContext | None = None
        self.body = bytearray()
        """Request bytes received but not yet cut into messages."""
        self.inbox: collections.deque[Message | RpcError] | None = None
        """Streaming requests decoded, not yet read by the handler (an error where one
        would not decode: the handler meets it after the requests before it)."""
        self.requests_failed = False
        self.inbox_sizes: collections.deque[int] = collections.deque()
        self.inbox_waiter: asyncio.Future[None] | None = None
        self.task: asyncio.Task[None] | None = None
        self.timer: asyncio.TimerHandle | None = None


class ServerSide(Protocol):
    """The accepting server, as a connection sees it (:class:`~kvstore.rpc.server.Server`)."""

    limits: Http2Limits
    methods: dict[str, Method]
    max_receive_bytes: int
    error_mapper: ErrorMapper
    connections: set[GrpcConnection]
    stream_turns: StreamTurns

    def unknown_method_message(self, path: str) -> str: ...


def _decoded(call: Call, data: bytes) -> Message | RpcError:
    """A request, or the status gRPC ends its call with when it does not decode."""
    assert call.method is not None
    try:
        return decode_strictly(call.method.request_type, data)
    except DecodeError as exc:
        return RpcError(StatusCode.INTERNAL, f"grpc: error unmarshalling request: {exc}")


class GrpcConnection(Http2Connection):
    def __init__(self, server: ServerSide) -> None:
        super().__init__(server.limits)
        self.server = server
        self.peer_common_name = ""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.server.connections.add(self)
        self.peer_common_name = peer_common_name(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)
        super().connection_lost(exc)

    # ----- HTTP/2 hooks

    def open_stream(self, stream_id: int, headers: dict[str, str]) -> Stream:
        call = Call(stream_id, self._peer_initial_window)
        path = headers.get(":path", "")
        content_type = headers.get("content-type", "")
        if headers.get(":method") != "POST" or not content_type.startswith("application/grpc"):
            self.finish(call, StatusCode.UNIMPLEMENTED, f"not a gRPC request: {content_type!r}")
            return call
        deadline = None
        timeout = headers.get("grpc-timeout")
        if timeout:
            try:
                deadline = time.monotonic() + int(timeout[:-1]) * _TIMEOUT_UNITS[timeout[-1]]
            except (ValueError, KeyError):
                self.finish(call, StatusCode.INTERNAL, f"bad grpc-timeout {timeout!r}")
                return call
        method = self.server.methods.get(path)
        if method is None:
            self.finish(call, StatusCode.UNIMPLEMENTED, self.server.unknown_method_message(path))
            return call
        call.method = method
        call.ctx = CallContext(path, headers, self.peer, deadline, self.peer_common_name)
        if deadline is not None:
            call.timer = self.loop.call_at(deadline, self._deadline_passed, call)
        if method.cardinality is Cardinality.BIDI_STREAM:
            call.inbox = collections.deque()
            self._start(call, self._run_stream(call))
        return call

    def stream_data(self, stream: Stream, data: bytes) -> None:
        assert isinstance(stream, Call)
        if stream.requests_failed:
            self.consumed(len(data))  # (nothing after a request that did not decode counts)
            return
        limit = self.server.max_receive_bytes
        if len(stream.body) + len(data) > limit + _MESSAGE_PREFIX_BYTES and stream.inbox is None:
            self.consumed(len(data))
            # The size the message's prefix declares, as gRPC reports it.
            head = bytes(stream.body[:_MESSAGE_PREFIX_BYTES]) + data[:_MESSAGE_PREFIX_BYTES]
            self._refuse_large(stream, int.from_bytes(head[1:_MESSAGE_PREFIX_BYTES], "big"))
            return
        stream.body += data
        if stream.inbox is not None:
            self._take_messages(stream)

    def stream_ended(self, stream: Stream) -> None:
        assert isinstance(stream, Call)
        method = stream.method
        if method is None:
            return
        if method.cardinality is Cardinality.BIDI_STREAM:
            self._wake_reader(stream)
            return
        data = self._next_message(stream)
        if stream.closed:
            return
        if data is None or stream.body:
            self._drop_body(stream)
            self.finish(stream, StatusCode.INTERNAL, "grpc: expected exactly one request message")
            return
        self.consumed(_MESSAGE_PREFIX_BYTES + len(data))
        request = self._decode(stream, data)
        if request is None:
            return
        assert stream.ctx is not None
        if method.cardinality is Cardinality.SERVER_STREAM:
            self._start(stream, self._run_stream(stream, request))
            return
        try:
            result = method.handler(request, stream.ctx)
        except Exception as exc:
            self._fail(stream, exc)
            return
        if isinstance(result, Message):
            self._respond(stream, result)
        elif isinstance(result, asyncio.Future):
            result.add_done_callback(lambda fut: self._future_done(stream, fut))
        else:
            self._start(stream, self._run_unary(stream, result))

    def stream_reset(self, stream: Stream) -> None:
        assert isinstance(stream, Call)
        if stream.timer is not None:
            stream.timer.cancel()
            stream.timer = None
        if stream.task is not None:
            stream.task.cancel()
        self._wake_reader(stream)

    # ----- request messages

    def _next_message(self, call: Call) -> bytes | None:
        """Cut the next whole gRPC message out of ``call.body`` (None: incomplete)."""
        body = call.body
        if len(body) < _MESSAGE_PREFIX_BYTES:
            return None
        size = int.from_bytes(body[1:_MESSAGE_PREFIX_BYTES], "big")
        if size > self.server.max_receive_bytes:
            self._refuse_large(call, size)
            return None
        end = _MESSAGE_PREFIX_BYTES + size
        if len(body) < end:
            return None
        if body[0]:
            self._drop_body(call)
            self.finish(call, StatusCode.UNIMPLEMENTED, "compressed messages are not supported")
            return None
        message = bytes(body[_MESSAGE_PREFIX_BYTES:end])
        del body[:end]
        return message

    def _drop_body(self, call: Call) -> None:
        """Stop reading the call's requests; what was buffered is consumed."""
        self.consumed(len(call.body) + sum(call.inbox_sizes))
        call.body.clear()
        call.inbox_sizes.clear()
        if call.inbox is not None:
            call.inbox.clear()

    def _refuse_large(self, call: Call, size: int) -> None:
        self._drop_body(call)
        limit = self.server.max_receive_bytes
        self.finish(
            call,
            StatusCode.RESOURCE_EXHAUSTED,
            f"grpc: received message larger than max ({size} vs. {limit})",
        )

    def _decode(self, call: Call, data: bytes) -> Message | None:
        decoded = _decoded(call, data)
        if isinstance(decoded, RpcError):
            self.finish(call, decoded.code, decoded.message)
            return None
        return decoded

    def _take_messages(self, call: Call) -> None:
        inbox = call.inbox
        assert inbox is not None
        while len(inbox) < REQUEST_QUEUE_MESSAGES and not call.closed:
            data = self._next_message(call)
            if data is None:
                break
            inbox.append(self._decode_in_stream(call, data))
            call.inbox_sizes.append(_MESSAGE_PREFIX_BYTES + len(data))
            if call.requests_failed:
                break
        self._wake_reader(call)

    def _decode_in_stream(self, call: Call, data: bytes) -> Message | RpcError:
        """A request of a stream, or the error its handler meets there (as gRPC's Recv
        returns it after the requests before it, whose answers go out first)."""
        decoded = _decoded(call, data)
        if isinstance(decoded, RpcError):
            call.requests_failed = True
            self.consumed(len(call.body))
            call.body.clear()
        return decoded

    async def _requests(self, call: Call) -> AsyncIterator[Message]:
        inbox = call.inbox
        assert inbox is not None
        while True:
            while inbox:
                message = inbox.popleft()
                self.consumed(call.inbox_sizes.popleft(), call)
                if isinstance(message, RpcError):
                    raise message
                if call.body:
                    self._take_messages(call)
                self.schedule_flush()
                yield message
            if call.end_received or call.closed:
                return
            waiter = self.loop.create_future()
            call.inbox_waiter = waiter
            try:
                await waiter
            finally:
                call.inbox_waiter = None

    def _wake_reader(self, call: Call) -> None:
        waiter = call.inbox_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _deadline_passed(self, call: Call) -> None:
        call.timer = None
        if not call.closed:
            self.finish(call, StatusCode.DEADLINE_EXCEEDED, "context deadline exceeded")
            if call.task is not None:
                call.task.cancel()
            self.flush()

    # ----- running handlers

    def _start(self, call: Call, handler: Coroutine[Any, Any, None]) -> None:
        call.task = task = self.loop.create_task(handler)
        task.add_done_callback(lambda _: _forget_task(call))

    def _future_done(self, call: Call, fut: asyncio.Future[Any]) -> None:
        if call.closed:
            if not fut.cancelled():
                fut.exception()  # retrieved: the caller went away, nobody else wants it
            return
        if fut.cancelled():
            self.finish(call, StatusCode.CANCELLED, "call cancelled")
        elif (exc := fut.exception()) is not None:
            self._fail(call, exc)
        else:
            self._respond(call, fut.result())
        self.schedule_flush()

    async def _run_unary(self, call: Call, awaitable: Awaitable[Message]) -> None:
        try:
            response = await awaitable
        except asyncio.CancelledError:
            self.finish(call, StatusCode.CANCELLED, "call cancelled")
            raise
        except Exception as exc:
            self._fail(call, exc)
        else:
            self._respond(call, response)
        self.schedule_flush()

    async def _run_stream(self, call: Call, request: Message | None = None) -> None:
        method = call.method
        assert method is not None and call.ctx is not None
        if request is None:
            responses = method.handler(self._requests(call), call.ctx)
        else:
            responses = method.handler(request, call.ctx)
        turns = self.server.stream_turns
        try:
            async for response in responses:
                if call.closed:
                    break
                data = response.SerializeToString()
                self._send_message(call, data)
                self.schedule_flush()
                if self.backed_up(call):
                    await self.writable(call)
                # Behind requests: streams with much to send take the loop in slices.
                if turns.spend(len(data)):
                    await turns.next_slice()
        except asyncio.CancelledError:
            self.finish(call, StatusCode.CANCELLED, "call cancelled")
            raise
        except Exception as exc:
            self._fail(call, exc)
        else:
            self.finish(call, StatusCode.OK, "")
        finally:
            with contextlib.suppress(Exception):
                await responses.aclose()
            self.schedule_flush()

    # ----- responses

    def _send_message(self, call: Call, data: bytes) -> None:
        if call.closed:
            return
        if not call.headers_sent:
            self.send_headers(call, fr.RESPONSE_HEADERS)
        self.send_data(call, len(data).to_bytes(_MESSAGE_PREFIX_BYTES, "big") + data)

    def _respond(self, call: Call, response: Message) -> None:
        self._send_message(call, response.SerializeToString())
        self.finish(call, StatusCode.OK, "")

    def _fail(self, call: Call, exc: BaseException) -> None:
        if isinstance(exc, RpcError):
            code, message = int(exc.code), exc.message
        else:
            code, message = self.server.error_mapper(exc)
        self.finish(call, code, message)

    def finish(self, call: Call, code: int, message: str) -> None:
        """End the call with a status (after whatever data is still queued)."""
        if call.closed:
            return
        if call.timer is not None:
            call.timer.cancel()
            call.timer = None
        trailers = fr.status_trailers(code, message)
        if not call.headers_sent:
            trailers = fr.RESPONSE_HEADERS + trailers  # trailers-only: one HEADERS frame
        self.end_stream(call, trailers)
        self._wake_reader(call)


def _forget_task(call: Call) -> None:
    """A cancelled handler's traceback holds its frames, and they the call: were the call to
    hold the task still, every cancelled stream would be a reference cycle left for the
    collector."""
    call.task = None


def peer_common_name(transport: asyncio.BaseTransport) -> str:
    """The subject Common Name of the peer's verified TLS certificate, or "" (none, or no TLS)."""
    cert = transport.get_extra_info("peercert")
    if not cert:
        return ""
    for rdn in cert.get("subject", ()):
        for name, value in rdn:
            if name == "commonName":
                return str(value)
    return ""

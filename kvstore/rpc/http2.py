"""The server side of one HTTP/2 connection (RFC 9113), on an asyncio Protocol.

Frames in: the connection preface and SETTINGS, HEADERS with CONTINUATION,
DATA (padding ignored), WINDOW_UPDATE, PING, RST_STREAM, GOAWAY; PRIORITY and
unknown frame types are ignored, as the protocol asks. Header blocks are
decoded by the ``hpack`` library. Frames out: HEADERS (split into
CONTINUATION when larger than the client's frame size), DATA within the
client's connection and stream windows, WINDOW_UPDATE, RST_STREAM, GOAWAY.

What a stream carries is a subclass's business (:mod:`kvstore.rpc.connection`
speaks gRPC on it) through four hooks: ``open_stream``, ``stream_data``,
``stream_ended`` and ``stream_reset``. Everything written in one turn of the
event loop leaves in one write.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging

import hpack

from kvstore.rpc import frames as fr
from kvstore.rpc.frames import END_HEADERS, END_STREAM, ErrorCode, FrameType, Setting

log = logging.getLogger(__name__)

MAX_FRAME_BYTES = 1024 * 1024
"""Largest frame we accept (we send frames as large as the client accepts)."""
MAX_HEADER_LIST_BYTES = 64 * 1024
MAX_HEADER_BLOCKS_SEEN = 64
"""Distinct header blocks a connection remembers decoded (a client has a few call shapes)."""
STREAM_SEND_HIGH_WATER_BYTES = 64 * 1024
"""Bytes a stream may have queued behind the client's flow-control window before its
writer waits (grpc-go's per-stream write quota is the same 64 KiB): a client that opens
many streams and reads none holds at most this much of the member's memory per stream."""


@dataclasses.dataclass(frozen=True)
class Http2Limits:
    max_concurrent_streams: int
    stream_window: int
    """What a client may send on a stream before we say we consumed it."""
    connection_window: int
    """What a client may send on the connection before we consumed it: bounds the
    bytes one connection buffers."""


class ProtocolError(Exception):
    """The client broke the protocol: the connection ends with GOAWAY and ``code``."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code


class Stream:
    """The sending side of one stream, and whether each side has ended."""

    __slots__ = (
        "closed",
        "credit",
        "end_received",
        "headers_sent",
        "id",
        "out",
        "out_bytes",
        "send_window",
        "trailers",
        "writable",
    )

    def __init__(self, stream_id: int, send_window: int) -> None:
        self.id = stream_id
        self.send_window = send_window
        self.end_received = False
        """The client sent END_STREAM."""
        self.closed = False
        """We ended our side (or the stream was reset): nothing more is sent."""
        self.headers_sent = False
        self.credit = 0
        """Bytes the handler consumed that the client was not yet told of."""
        self.out: collections.deque[memoryview] = collections.deque()
        self.out_bytes = 0
        self.trailers: bytes | None = None
        self.writable: asyncio.Event | None = None


class Http2Connection(asyncio.Protocol):
    """One client connection: frames, streams, flow control, output."""

    def __init__(self, limits: Http2Limits) -> None:
        self.limits = limits
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.peer = ""
        self.streams: dict[int, Stream] = {}
        self.closed = False
        self._buf = bytearray()
        self._preface_seen = False
        self._decoder = hpack.Decoder()
        self._decoder.max_header_list_size = MAX_HEADER_LIST_BYTES
        self._headers_seen: dict[bytes, dict[str, str]] = {}
        self._last_stream_id = 0
        self._continuation: tuple[int, int, bytearray] | None = None  # (stream, flags, block)
        self._out: list[bytes] = []
        self._flush_scheduled = False
        self._conn_send_window = fr.DEFAULT_WINDOW
        self._peer_initial_window = fr.DEFAULT_WINDOW
        self._peer_max_frame = fr.DEFAULT_MAX_FRAME
        self._conn_credit = 0
        self._paused = False
        self._blocked: dict[int, Stream] = {}  # streams with data waiting for a window
        self._going_away = False
        self._idle: asyncio.Future[None] | None = None

    # ----- hooks for the protocol on top

    def open_stream(self, stream_id: int, headers: dict[str, str]) -> Stream:
        """A new stream's request headers; returns its state (ending it is allowed)."""
        raise NotImplementedError

    def stream_data(self, stream: Stream, data: bytes) -> None:
        """Request bytes; count them with :meth:`consumed` once they are no longer held."""
        raise NotImplementedError

    def stream_ended(self, stream: Stream) -> None:
        """The client sent END_STREAM on ``stream``."""
        raise NotImplementedError

    def stream_reset(self, stream: Stream) -> None:
        """The client reset ``stream`` or went away: stop working on it."""
        raise NotImplementedError

    # ----- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # (uvloop's is not a subclass)
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        limits = self.limits
        self._emit(
            fr.settings_frame(
                {
                    Setting.MAX_CONCURRENT_STREAMS: limits.max_concurrent_streams,
                    Setting.INITIAL_WINDOW_SIZE: limits.stream_window,
                    Setting.MAX_FRAME_SIZE: MAX_FRAME_BYTES,
                    Setting.MAX_HEADER_LIST_SIZE: MAX_HEADER_LIST_BYTES,
                    Setting.ENABLE_PUSH: 0,
                }
            )
        )
        self._emit(fr.window_update(0, limits.connection_window - fr.DEFAULT_WINDOW))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        for stream in list(self.streams.values()):
            self._reset(stream)
        self.streams.clear()
        if self._idle is not None and not self._idle.done():
            self._idle.set_result(None)

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        for stream in list(self.streams.values()):
            self._wake_writer(stream)

    def data_received(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        try:
            if not self._preface_seen:
                if len(buf) < len(fr.PREFACE):
                    if not fr.PREFACE.startswith(bytes(buf)):
                        raise ProtocolError(ErrorCode.PROTOCOL_ERROR, "not an HTTP/2 preface")
                    return
                if bytes(buf[: len(fr.PREFACE)]) != fr.PREFACE:
                    raise ProtocolError(ErrorCode.PROTOCOL_ERROR, "not an HTTP/2 preface")
                del buf[: len(fr.PREFACE)]
                self._preface_seen = True
            self._read_frames()
        except ProtocolError as exc:
            log.info("closing HTTP/2 connection from %s: %s", self.peer, exc)
            self._emit(fr.goaway(self._last_stream_id, exc.code, str(exc).encode()))
            self.flush()
            if self.transport is not None:
                self.transport.close()
            return
        if self._conn_credit >= self.limits.connection_window // 4 or not self.streams:
            self._return_credit()
        self.flush()

    def eof_received(self) -> bool | None:
        return None  # close our side too

    # ----- reading

    def _read_frames(self) -> None:
        buf = self._buf
        n = len(buf)
        pos = 0
        try:
            while n - pos >= fr.FRAME_HEADER_BYTES:
                length = (buf[pos] << 16) | (buf[pos + 1] << 8) | buf[pos + 2]
                if length > MAX_FRAME_BYTES:
                    raise ProtocolError(ErrorCode.FRAME_SIZE_ERROR, "frame too large")
                end = pos + fr.FRAME_HEADER_BYTES + length
                if end > n:
                    break
                kind = buf[pos + 3]
                flags = buf[pos + 4]
                stream_id = int.from_bytes(buf[pos + 5 : pos + 9], "big") & 0x7FFFFFFF
                payload = bytes(buf[pos + fr.FRAME_HEADER_BYTES : end])
                pos = end
                if self._continuation is not None and kind != FrameType.CONTINUATION:
                    raise ProtocolError(ErrorCode.PROTOCOL_ERROR, "expected CONTINUATION")
                if kind == FrameType.DATA:
                    self._on_data(stream_id, flags, payload)
                elif kind == FrameType.HEADERS:
                    self._on_headers(stream_id, flags, payload)
                elif kind == FrameType.CONTINUATION:
                    self._on_continuation(stream_id, flags, payload)
                elif kind == FrameType.WINDOW_UPDATE:
                    self._on_window_update(stream_id, payload)
                elif kind == FrameType.SETTINGS:
                    self._on_settings(stream_id, flags, payload)
                elif kind == FrameType.PING:
                    if len(payload) != 8 or stream_id:
                        raise ProtocolError(ErrorCode.PROTOCOL_ERROR, "bad PING")
                    if not flags & fr.ACK:
                        self._emit(fr.frame(FrameType.PING, fr.ACK, 0, payload))
                elif kind == FrameType.RST_STREAM:
                    stream = self.streams.pop(stream_id, None)
                    if stream is not None:
                        self._reset(stream)
                elif kind == FrameType.GOAWAY:
                    self._going_away = True
                elif kind == FrameType.PUSH_PROMISE:
                    raise ProtocolError(ErrorCode.PROTOCOL_ERROR, "a client may not push")
        finally:
            del buf[:pos]

    def _on_settings(self, stream_id: int, flags: int, payload: bytes) -> None:
        if stream_id:
            raise ProtocolError(ErrorCode.PROTOCOL_ERROR, "SETTINGS on a stream")
        if flags & fr.ACK:
            return
        if len(payload) % 6:
            raise ProtocolError(ErrorCode.FRAME_SIZE_ERROR, "bad SETTINGS length")
        for key, value in fr.parse_settings(payload):
            if key == Setting.INITIAL_WINDOW_SIZE:
                if value > fr.MAX_WINDOW:
                    raise ProtocolError(ErrorCode.FLOW_CONTROL_ERROR, "window too large")
                delta = value - self._peer_initial_window
                self._peer_initial_window = value
                for stream in self.streams.values():
                    stream.send_window += delta
            elif key == Setting.MAX_FRAME_SIZE:
                if not fr.DEFAULT_MAX_FRAME <= value <= fr.MAX_FRAME_LIMIT:
                    raise ProtocolError(ErrorCode.PROTOCOL_ERROR, "bad MAX_FRAME_SIZE")
                self._peer_max_frame = value
        self._emit(fr.frame(FrameType.SETTINGS, fr.ACK, 0))
        for stream in list(self.streams.values()):
            self._pump(stream)

    def _on_window_update(self, stream_id: int, payload: bytes) -> None:
        if len(payload) != 4:
            raise ProtocolError(ErrorCode.FRAME_SIZE_ERROR, "bad WINDOW_UPDATE")
        increment = fr.u32(payload) & 0x7FFFFFFF
        if stream_id == 0:
            if increment == 0:
                raise ProtocolError(ErrorCode.PROTOCOL_ERROR, "zero window increment")
            self._conn_send_window += increment
            if self._conn_send_window > fr.MAX_WINDOW:
                raise ProtocolError(ErrorCode.FLOW_CONTROL_ERROR, "window overflow")
            for blocked in list(self._blocked.values()):
                self._pump(blocked)
            return
        stream = self.streams.get(stream_id)
        if stream is not None:
            stream.send_window += increment
            self._pump(stream)

    def _on_headers(self, stream_id: int, flags: int, payload: bytes) -> None:
        if stream_id == 0:
            raise ProtocolError(ErrorCode.PROTOCOL_ERROR, "HEADERS on stream 0")
        if flags & fr.PADDED:
            pad = payload[0]
            payload = payload[1 : len(payload) - pad]
        if flags & fr.PRIORITY_FLAG:
            payload = payload[5:]
        if flags & END_HEADERS:
            self._on_header_block(stream_id, flags, payload)
        else:
            self._continuation = (stream_id, flags, bytearray(payload))

    def _on_continuation(self, stream_id: int, flags: int, payload: bytes) -> None:
        pending = self._continuation
        if pending is None or pending[0] != stream_id:
            raise ProtocolError(ErrorCode.PROTOCOL_ERROR, "unexpected CONTINUATION")
        pending[2].extend(payload)
        if len(pending[2]) > MAX_HEADER_LIST_BYTES:
            raise ProtocolError(ErrorCode.ENHANCE_YOUR_CALM, "header block too large")
        if flags & END_HEADERS:
            self._continuation = None
            self._on_header_block(stream_id, pending[1], bytes(pending[2]))

    def _decode_headers(self, block: bytes) -> dict[str, str]:
        """The block's headers. A client that repeats its calls sends the very same block
        of references into the header table each time: those are decoded once (until the
        table changes), which saves most of the cost of a small call."""
        cached = self._headers_seen.get(block)
        if cached is not None:
            return cached
        table = self._decoder.header_table.dynamic_entries
        before = (len(table), id(table[0]) if table else 0)
        try:
            fields = self._decoder.decode(block, raw=True)
        except Exception as exc:  # hpack raises several error types for bad blocks
            raise ProtocolError(ErrorCode.COMPRESSION_ERROR, f"bad header block: {exc}") from None
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in fields}
        if (len(table), id(table[0]) if table else 0) != before:
            self._headers_seen.clear()  # the same bytes would now point at other entries
        elif len(self._headers_seen) < MAX_HEADER_BLOCKS_SEEN:
            self._headers_seen[block] = headers
        return headers

    def _on_header_block(self, stream_id: int, flags: int, block: bytes) -> None:
        headers = self._decode_headers(block)
        stream = self.streams.get(stream_id)
        if stream is not None:  # trailers from the client: only END_STREAM matters
            if flags & END_STREAM:
                self._client_ended(stream)
            return
        if stream_id % 2 == 0:
            raise ProtocolError(ErrorCode.PROTOCOL_ERROR, "a client stream id must be odd")
        if stream_id <= self._last_stream_id:
            return  # a stream we already closed: ignore
        self._last_stream_id = stream_id
        if self._going_away or len(self.streams) >= self.limits.max_concurrent_streams:
            self._emit(fr.rst_stream(stream_id, ErrorCode.REFUSED_STREAM))
            return
        stream = self.open_stream(stream_id, headers)
        if not stream.closed:
            self.streams[stream_id] = stream
        if flags & END_STREAM:
            self._client_ended(stream)

    def _on_data(self, stream_id: int, flags: int, payload: bytes) -> None:
        if flags & fr.PADDED:
            pad = payload[0]
            self._conn_credit += pad + 1
            payload = payload[1 : len(payload) - pad]
        stream = self.streams.get(stream_id)
        if stream is None or stream.end_received or stream.closed:
            self._conn_credit += len(payload)  # nobody will read it
            return
        self.stream_data(stream, payload)
        if flags & END_STREAM:
            self._client_ended(stream)

    def _client_ended(self, stream: Stream) -> None:
        stream.end_received = True
        if stream.closed:
            self._forget(stream)
        else:
            self.stream_ended(stream)

    def _reset(self, stream: Stream) -> None:
        stream.closed = True
        stream.out.clear()
        stream.out_bytes = 0
        stream.trailers = None
        self._blocked.pop(stream.id, None)
        self._wake_writer(stream)
        self.stream_reset(stream)

    # ----- flow control of what the client sends

    def consumed(self, nbytes: int, stream: Stream | None = None) -> None:
        """``nbytes`` the client sent are no longer held: it may send as much again.

        The client hears of it in batches (a quarter of a window at a time), long
        before its window runs out.
        """
        self._conn_credit += nbytes
        if self._conn_credit >= self.limits.connection_window // 4:
            self._return_credit()
        if stream is not None and not stream.end_received and not stream.closed:
            stream.credit += nbytes
            if stream.credit >= self.limits.stream_window // 4:
                self._emit(fr.window_update(stream.id, stream.credit))
                stream.credit = 0

    def _return_credit(self) -> None:
        """Tell the client what it may send again on the connection."""
        if self._conn_credit:
            self._emit(fr.window_update(0, self._conn_credit))
            self._conn_credit = 0

    # ----- writing

    def send_headers(self, stream: Stream, block: bytes) -> None:
        stream.headers_sent = True
        self._emit(fr.frame(FrameType.HEADERS, END_HEADERS, stream.id, block))

    def send_data(self, stream: Stream, data: bytes) -> None:
        """Queue ``data`` on ``stream``: it leaves as the client's windows allow."""
        if stream.closed:
            return
        stream.out.append(memoryview(data))
        stream.out_bytes += len(data)
        self._pump(stream)

    def end_stream(self, stream: Stream, block: bytes) -> None:
        """End our side with a last header block (trailers), after the data queued."""
        if stream.closed:
            return
        stream.closed = True
        if not stream.out:
            self._send_end(stream, block)
        else:
            stream.trailers = block
            self._pump(stream)

    def _send_end(self, stream: Stream, block: bytes) -> None:
        stream.headers_sent = True
        limit = self._peer_max_frame
        if len(block) <= limit:
            self._emit(fr.frame(FrameType.HEADERS, END_STREAM | END_HEADERS, stream.id, block))
        else:
            self._emit(fr.frame(FrameType.HEADERS, END_STREAM, stream.id, block[:limit]))
            for offset in range(limit, len(block), limit):
                last = offset + limit >= len(block)
                self._emit(
                    fr.frame(
                        FrameType.CONTINUATION,
                        END_HEADERS if last else 0,
                        stream.id,
                        block[offset : offset + limit],
                    )
                )
        if not stream.end_received:
            # The client is still sending (an early error, or a stream we ended): stop it.
            self._emit(fr.rst_stream(stream.id, ErrorCode.NO_ERROR))
        self._forget(stream)
        self._wake_writer(stream)

    def _pump(self, stream: Stream) -> None:
        """Send what flow control allows of ``stream``'s queued data, then its trailers."""
        out = stream.out
        while out:
            room = min(stream.send_window, self._conn_send_window, self._peer_max_frame)
            if room <= 0:
                self._blocked[stream.id] = stream
                return
            chunk = out[0]
            if len(chunk) <= room:
                out.popleft()
            else:
                out[0] = chunk[room:]
                chunk = chunk[:room]
            n = len(chunk)
            stream.send_window -= n
            self._conn_send_window -= n
            stream.out_bytes -= n
            self._emit(fr.frame(FrameType.DATA, 0, stream.id, bytes(chunk)))
        self._blocked.pop(stream.id, None)
        if stream.out_bytes <= STREAM_SEND_HIGH_WATER_BYTES:
            self._wake_writer(stream)
        if stream.trailers is not None:
            trailers, stream.trailers = stream.trailers, None
            self._send_end(stream, trailers)

    def backed_up(self, stream: Stream) -> bool:
        """Whether ``stream`` has too much queued or the socket is backed up."""
        return stream.out_bytes > STREAM_SEND_HIGH_WATER_BYTES or self._paused

    async def writable(self, stream: Stream) -> None:
        """Wait while ``stream`` is backed up (see ``backed_up``)."""
        while self.backed_up(stream) and not (stream.closed or self.closed):
            if stream.writable is None:
                stream.writable = asyncio.Event()
            stream.writable.clear()
            await stream.writable.wait()

    def _wake_writer(self, stream: Stream) -> None:
        if stream.writable is not None:
            stream.writable.set()

    def _forget(self, stream: Stream) -> None:
        self.streams.pop(stream.id, None)
        self._blocked.pop(stream.id, None)
        if not self.streams and self._idle is not None and not self._idle.done():
            self._idle.set_result(None)

    def _emit(self, data: bytes) -> None:
        self._out.append(data)

    def schedule_flush(self) -> None:
        """Write what is queued at the end of this turn of the event loop."""
        if not self._flush_scheduled and self._out:
            self._flush_scheduled = True
            self.loop.call_soon(self.flush)

    def flush(self) -> None:
        self._flush_scheduled = False
        if not self._out:
            return
        out, self._out = self._out, []
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(b"".join(out))

    # ----- shutdown

    def go_away(self) -> None:
        """Refuse new streams (server shutdown); streams in flight finish."""
        self._going_away = True
        self._emit(fr.goaway(self._last_stream_id, ErrorCode.NO_ERROR))
        self.flush()

    async def wait_idle(self) -> None:
        """Until no stream is open."""
        if self.streams and not self.closed:
            if self._idle is None or self._idle.done():
                self._idle = self.loop.create_future()
            await self._idle

    def close(self) -> None:
        for stream in list(self.streams.values()):
            self._reset(stream)
        self.streams.clear()
        if self.transport is not None:
            self.transport.close()

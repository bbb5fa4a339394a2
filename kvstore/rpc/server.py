"""A small gRPC server for asyncio: HTTP/2 spoken directly on the event loop.

Why our own: a unary call through grpc.aio (or through grpclib on the ``h2``
library) costs this 2-core machine 240-280 µs of server CPU; most of it is the
hand-offs between grpc's poller thread and the event loop, or h2's general
state machine. A gRPC server needs a small part of HTTP/2, and speaking that
part on the event loop costs about 40-60 µs a call. The layers:
:mod:`~kvstore.rpc.http2` (frames, streams, flow control),
:mod:`~kvstore.rpc.connection` (gRPC calls on them) and this module (listeners,
methods, shutdown); :mod:`~kvstore.rpc.switch` lets a listener share its port
with HTTP/1.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl

from kvstore.rpc import frames as fr
from kvstore.rpc.call import ErrorMapper, Method, default_error_mapper
from kvstore.rpc.connection import GrpcConnection
from kvstore.rpc.http2 import Http2Limits
from kvstore.rpc.switch import ALPN_PROTOCOLS, ProtocolFactory, ProtocolSwitch
from kvstore.rpc.turns import StreamTurns

DEFAULT_MAX_CONCURRENT_STREAMS = 10_000
"""Streams one connection may have open (a member sets its --max-concurrent-streams)."""
RECEIVE_WINDOW_BYTES = 4 * 1024 * 1024
"""The smallest stream window we grant (at least one whole request of the largest size
allowed: a unary call then never waits for a window)."""
CONNECTION_WINDOW_FACTOR = 4
"""The connection window, in stream windows."""


class Server:
    """Serve ``methods`` (path -> :class:`Method`) on any number of listeners."""

    def __init__(
        self,
        methods: dict[str, Method],
        *,
        max_receive_bytes: int,
        max_concurrent_streams: int = DEFAULT_MAX_CONCURRENT_STREAMS,
        error_mapper: ErrorMapper = default_error_mapper,
    ) -> None:
        self.methods = methods
        self.max_receive_bytes = max_receive_bytes
        self.error_mapper = error_mapper
        stream_window = min(fr.MAX_WINDOW, max(RECEIVE_WINDOW_BYTES, max_receive_bytes + 1024))
        self.limits = Http2Limits(
            max_concurrent_streams=max_concurrent_streams,
            stream_window=stream_window,
            connection_window=min(fr.MAX_WINDOW, CONNECTION_WINDOW_FACTOR * stream_window),
        )
        self.connections: set[GrpcConnection] = set()
        self.stream_turns = StreamTurns()
        self._undecided: set[ProtocolSwitch] = set()
        self._services = {path.lstrip("/").partition("/")[0] for path in methods}
        self._listeners: list[asyncio.Server] = []

    def unknown_method_message(self, path: str) -> str:
        service, _, name = path.lstrip("/").partition("/")
        if service in self._services:
            return f"unknown method {name} for service {service}"
        return f"unknown service {service}"

    async def listen(
        self,
        host: str,
        port: int,
        ssl_context: ssl.SSLContext | None = None,
        http1: ProtocolFactory | None = None,
    ) -> None:
        """Bind and serve ``host:port`` (TLS with ALPN ``h2`` when ``ssl_context`` is given).

        With ``http1``, connections that do not speak HTTP/2 go to the protocol it
        makes (see :mod:`kvstore.rpc.switch`).
        """
        loop = asyncio.get_running_loop()
        factory: ProtocolFactory
        if http1 is None:
            alpn = ["h2"]
            factory = self._connection
        else:
            alpn = ALPN_PROTOCOLS

            def factory() -> asyncio.Protocol:
                return ProtocolSwitch(self._connection, http1, self._undecided)

        if ssl_context is not None:
            ssl_context.set_alpn_protocols(alpn)
        listener = await loop.create_server(
            factory, host, port, ssl=ssl_context, reuse_address=True
        )
        self._listeners.append(listener)

    def _connection(self) -> GrpcConnection:
        return GrpcConnection(self)

    def ports(self) -> list[int]:
        return [int(s.getsockname()[1]) for lst in self._listeners for s in lst.sockets]

    async def stop(self, grace: float | None = None) -> None:
        """Stop listening; give calls in flight ``grace`` seconds, then close everything."""
        for listener in self._listeners:
            listener.close()
        for undecided in list(self._undecided):
            undecided.close()
        conns = list(self.connections)
        for conn in conns:
            conn.go_away()
        if grace and conns:
            waits = [asyncio.ensure_future(c.wait_idle()) for c in conns]
            _, pending = await asyncio.wait(waits, timeout=grace)
            for w in pending:
                w.cancel()
        for conn in conns:
            conn.close()
        for listener in self._listeners:
            with contextlib.suppress(Exception):
                await listener.wait_closed()
        self._listeners.clear()

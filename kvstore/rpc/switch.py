"""One port for gRPC and HTTP/1.1, as etcd serves its client port: the first bytes decide.

A connection that opens with the HTTP/2 client preface is gRPC; any other is
handed to an HTTP/1.1 protocol (etcd's gateway, /health, /metrics). Under
TLS the same holds after the handshake; ALPN offers ``http/1.1`` before
``h2`` so that clients able to speak both (curl, browsers) pick the one we
serve HTTP on, while gRPC clients, which offer only ``h2``, get it.
Once decided, the connection's transport belongs to the chosen protocol: the
switch costs nothing per request.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from kvstore.rpc.frames import PREFACE

log = logging.getLogger(__name__)

ProtocolFactory = Callable[[], asyncio.Protocol]
ALPN_PROTOCOLS = ["http/1.1", "h2"]
"""Server preference order (OpenSSL picks the first of ours the client offers)."""


class ProtocolSwitch(asyncio.Protocol):
    """Reads until the bytes tell HTTP/2 from HTTP/1.x, then hands the connection over."""

    def __init__(
        self, http2: ProtocolFactory, http1: ProtocolFactory, pending: set[ProtocolSwitch]
    ) -> None:
        self.http2 = http2
        self.http1 = http1
        self.pending = pending
        """Undecided connections (closed at shutdown)."""
        self.transport: asyncio.Transport | None = None
        self.buffer = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # (uvloop's is not a subclass)
        self.pending.add(self)
        ssl_object = transport.get_extra_info("ssl_object")
        alpn = ssl_object.selected_alpn_protocol() if ssl_object is not None else None
        if alpn == "h2":
            self._hand_over(self.http2)
        elif alpn == "http/1.1":
            self._hand_over(self.http1)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        head = self.buffer[: len(PREFACE)]
        if not PREFACE.startswith(head):
            self._hand_over(self.http1)
        elif len(head) == len(PREFACE):
            self._hand_over(self.http2)

    def eof_received(self) -> bool | None:
        return None  # nothing was asked: close

    def connection_lost(self, exc: Exception | None) -> None:
        self.pending.discard(self)

    def _hand_over(self, factory: ProtocolFactory) -> None:
        transport = self.transport
        assert transport is not None
        self.pending.discard(self)
        protocol = factory()
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        if self.buffer:
            buffered, self.buffer = self.buffer, b""
            protocol.data_received(buffered)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

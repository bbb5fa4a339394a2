"""The peer-link proxy: pass-through, per-direction blocking, delay, loss, heal, and
telling the sender of etcd's (HTTP/1.1) and our (gRPC, HTTP/2) peer connections."""

from __future__ import annotations

import contextlib
import socket
import socketserver
import threading
import time
from collections.abc import AsyncIterator, Iterator

import anyio
import grpc
import hpack
import pytest

from kvstore._pb.etcdserverpb import rpc_pb2
from kvstore._pb.peerpb import peer_pb2_grpc
from kvstore.chaos.proxy import (
    HTTP2_PREFACE,
    LinkRule,
    ProxyMesh,
    etcd_sender,
    grpc_sender,
    peer_sender,
)
from kvstore.ports import free_ports
from kvstore.server.metrics import Metrics
from kvstore.server.transport import PEER_USER_AGENT, Transport

HEAD = b"POST /raft HTTP/1.1\r\nHost: x\r\nX-Server-From: a1\r\n\r\n"


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while data := self.request.recv(65536):
            self.request.sendall(data)


@pytest.fixture
def mesh() -> Iterator[ProxyMesh]:
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Echo)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    (proxy_port,) = free_ports(1)
    # Member 1 listens behind the proxy; the sender id 0xa1 is member 0.
    mesh = ProxyMesh(
        [("127.0.0.1", free_ports(1)[0]), ("127.0.0.1", proxy_port)],
        [("127.0.0.1", 1), ("127.0.0.1", server.server_address[1])],
    )
    mesh.set_member_ids({0xA1: 0})
    mesh.start()
    yield mesh
    mesh.stop()
    server.shutdown()
    server.server_close()


def _connect(mesh: ProxyMesh) -> socket.socket:
    sock = socket.create_connection(mesh.listen[1], timeout=10)
    sock.sendall(HEAD)
    assert _recv_exactly(sock, len(HEAD)) == HEAD
    return sock


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    out = b""
    while len(out) < n:
        chunk = sock.recv(n - len(out))
        if not chunk:
            break
        out += chunk
    return out


def test_pass_through(mesh: ProxyMesh) -> None:
    with _connect(mesh) as sock:
        sock.sendall(b"hello")
        assert _recv_exactly(sock, 5) == b"hello"


def test_block_then_heal_resets_frozen_connections(mesh: ProxyMesh) -> None:
    with _connect(mesh) as sock:
        mesh.set_rule(0, 1, LinkRule(blocked=True))
        sock.sendall(b"lost")
        sock.settimeout(0.5)
        with pytest.raises(TimeoutError):
            sock.recv(10)
        mesh.heal()
        sock.settimeout(10)
        with contextlib.suppress(ConnectionResetError):
            assert sock.recv(10) == b""  # reset: what was in flight is gone
    with _connect(mesh) as sock:  # new connections work again
        sock.sendall(b"back")
        assert _recv_exactly(sock, 4) == b"back"


def test_one_way_block_only_stops_that_direction(mesh: ProxyMesh) -> None:
    with _connect(mesh) as sock:
        mesh.set_rule(1, 0, LinkRule(blocked=True))  # replies towards member 0 stall
        sock.sendall(b"ping")
        sock.settimeout(0.5)
        with pytest.raises(TimeoutError):
            sock.recv(10)


def test_delay(mesh: ProxyMesh) -> None:
    with _connect(mesh) as sock:
        mesh.set_rule(0, 1, LinkRule(delay=0.3))
        start = time.monotonic()
        sock.sendall(b"slow")
        assert _recv_exactly(sock, 4) == b"slow"
        assert time.monotonic() - start >= 0.3


def test_loss_resets_the_connection(mesh: ProxyMesh) -> None:
    with _connect(mesh) as sock:
        mesh.set_rule(0, 1, LinkRule(loss=1.0))
        sock.sendall(b"gone")
        with contextlib.suppress(ConnectionResetError):
            assert sock.recv(10) == b""


# ---------------------------------------------------------------------------- who sends


def _frame(kind: int, flags: int, payload: bytes, stream: int = 0) -> bytes:
    head = len(payload).to_bytes(3, "big") + bytes([kind, flags]) + stream.to_bytes(4, "big")
    return head + payload


def _http2_start(user_agent: bytes) -> bytes:
    """A client connection start: preface, SETTINGS, WINDOW_UPDATE, then one request's
    header block split over a padded, prioritised HEADERS and a CONTINUATION frame."""
    block = hpack.Encoder().encode(
        [
            (b":method", b"POST"),
            (b":scheme", b"http"),
            (b":path", b"/peerpb.Peer/Send"),
            (b":authority", b"127.0.0.1:2380"),
            (b"content-type", b"application/grpc"),
            (b"user-agent", user_agent),
            (b"te", b"trailers"),
        ]
    )
    cut = len(block) // 2
    padding = 3
    headers = bytes([padding]) + b"\x80\x00\x00\x00\x10" + block[:cut] + b"\x00" * padding
    return (
        HTTP2_PREFACE
        + _frame(0x4, 0x0, b"\x00\x04\x00\x40\x00\x00")  # SETTINGS
        + _frame(0x8, 0x0, b"\x00\x01\x00\x00")  # WINDOW_UPDATE
        + _frame(0x1, 0x8 | 0x20, headers, stream=1)  # HEADERS, PADDED | PRIORITY
        + _frame(0x9, 0x4, block[cut:], stream=1)  # CONTINUATION, END_HEADERS
        + _frame(0x0, 0x0, b"\x00\x00\x00\x00\x00", stream=1)  # DATA
    )


def test_sender_is_read_from_the_first_http2_header_block() -> None:
    start = _http2_start(f"{PEER_USER_AGENT}8e9e05c52164694d grpc-python/1".encode())
    assert grpc_sender(start) == 0x8E9E05C52164694D
    assert peer_sender(start) == 0x8E9E05C52164694D
    end_of_block = len(start) - 14  # the DATA frame is not needed
    for cut in range(end_of_block):
        assert grpc_sender(start[:cut]) is None, cut  # not known before the block is complete
        assert peer_sender(start[:cut]) is None, cut
    assert grpc_sender(_http2_start(b"grpc-python/1 grpc-c/2")) is None


def test_sender_of_an_etcd_request_waits_for_the_whole_head() -> None:
    head = b"GET /raft/stream/msgapp/1 HTTP/1.1\r\nX-Server-From: 8e9e05c52164694d\r\n\r\n"
    assert peer_sender(head) == 0x8E9E05C52164694D
    assert etcd_sender(head[:-4]) is None  # a truncated id must not be taken for the sender


class _Peer(peer_pb2_grpc.PeerServicer):
    async def LeaseTimeToLive(self, request, context):
        return rpc_pb2.LeaseTimeToLiveResponse(ID=request.ID, TTL=7)


@pytest.fixture
async def peer_server() -> AsyncIterator[int]:
    server = grpc.aio.server()
    peer_pb2_grpc.add_PeerServicer_to_server(_Peer(), server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield port
    await server.stop(grace=None)


async def test_our_peer_transport_is_told_apart_and_cut(peer_server: int) -> None:
    """Member 0 (id 0xabc) dials member 1 through member 1's proxy, with our real transport."""
    (proxy_port,) = free_ports(1)
    mesh = ProxyMesh(
        [("127.0.0.1", free_ports(1)[0]), ("127.0.0.1", proxy_port)],
        [("127.0.0.1", 1), ("127.0.0.1", peer_server)],
    )
    mesh.set_member_ids({0xABC: 0})
    mesh.start()
    transport = Transport(
        0xABC,
        1,
        {0xABC: "http://127.0.0.1:1", 0xDEF: f"http://127.0.0.1:{proxy_port}"},
        Metrics(),
        lambda peer: None,
        lambda peer, ok: None,
    )
    stub = transport.peers[0xDEF].stub()
    request = rpc_pb2.LeaseTimeToLiveRequest(ID=5)
    try:
        assert (await stub.LeaseTimeToLive(request, timeout=10)).TTL == 7
        mesh.set_member_ids({0xABC: 0, 0x123: 2})
        mesh.set_rule(2, 1, LinkRule(blocked=True))  # another sender's link: calls still pass
        assert (await stub.LeaseTimeToLive(request, timeout=10)).TTL == 7
        mesh.heal()
        mesh.set_rule(0, 1, LinkRule(blocked=True))
        with pytest.raises(grpc.aio.AioRpcError) as cut:
            await stub.LeaseTimeToLive(request, timeout=1)
        assert cut.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        mesh.heal()
        with anyio.fail_after(30):
            while True:  # the frozen connection was reset; the channel redials
                try:
                    assert (await stub.LeaseTimeToLive(request, timeout=5)).TTL == 7
                    break
                except grpc.aio.AioRpcError:
                    await anyio.sleep(0.1)
    finally:
        await transport.close()
        mesh.stop()

"""The peer-link proxy: pass-through, per-direction blocking, delay, loss, heal, and
telling the sender of etcd's (HTTP/1.1) and our (gRPC, HTTP/2) peer connections."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import socketserver
import threading
import time
from collections.abc import AsyncIterator, Iterator

import anyio
import pytest

from chaos.proxy import (
    LinkRule,
    ProxyMesh,
    etcd_sender,
    peer_sender,
)
from kvstore._pb.etcdserverpb import rpc_pb2
from kvstore.ports import free_ports
from kvstore.server.config import TLSFiles
from kvstore.server.metrics import Metrics
from kvstore.server.peerlistener import CallSpec, PeerListener
from kvstore.server.peerwire import PeerMethod, StreamKind, hello
from kvstore.server.transport import PeerUnreachableError, Transport

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


def test_sender_is_read_from_our_hello() -> None:
    start = hello(0x1234, 0x8E9E05C52164694D, StreamKind.MESSAGES) + b"\x00\x00\x00\x01\x0a"
    assert peer_sender(start) == 0x8E9E05C52164694D
    for cut in range(len(start) - 5):
        assert peer_sender(start[:cut]) is None, cut  # not known before the hello is whole


def test_sender_of_an_etcd_request_waits_for_the_whole_head() -> None:
    head = b"GET /raft/stream/msgapp/1 HTTP/1.1\r\nX-Server-From: 8e9e05c52164694d\r\n\r\n"
    assert peer_sender(head) == 0x8E9E05C52164694D
    assert etcd_sender(head[:-4]) is None  # a truncated id must not be taken for the sender


@pytest.fixture
async def listener() -> AsyncIterator[tuple[int, PeerListener]]:
    (port,) = free_ports(1)
    peer = PeerListener(1, lambda msgs: None)

    async def time_to_live(req: rpc_pb2.LeaseTimeToLiveRequest) -> rpc_pb2.LeaseTimeToLiveResponse:
        return rpc_pb2.LeaseTimeToLiveResponse(ID=req.ID, TTL=7)

    peer.calls[PeerMethod.LEASE_TIME_TO_LIVE] = CallSpec(
        rpc_pb2.LeaseTimeToLiveRequest, time_to_live
    )
    await peer.listen(f"http://127.0.0.1:{port}", TLSFiles(prefix="peer-"))
    yield port, peer
    await peer.close()


async def test_our_peer_transport_is_told_apart_and_cut(
    listener: tuple[int, PeerListener],
) -> None:
    """Member 0 (id 0xabc) dials member 1 through member 1's proxy, with our real transport."""
    port, _ = listener
    (proxy_port,) = free_ports(1)
    mesh = ProxyMesh(
        [("127.0.0.1", free_ports(1)[0]), ("127.0.0.1", proxy_port)],
        [("127.0.0.1", 1), ("127.0.0.1", port)],
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
    running = asyncio.create_task(transport.run())
    request = rpc_pb2.LeaseTimeToLiveRequest(ID=5)

    async def ttl(timeout: float) -> int:
        resp = await transport.call(
            0xDEF,
            PeerMethod.LEASE_TIME_TO_LIVE,
            request,
            rpc_pb2.LeaseTimeToLiveResponse,
            timeout,
        )
        return int(resp.TTL)

    try:
        assert await ttl(10) == 7
        mesh.set_member_ids({0xABC: 0, 0x123: 2})
        mesh.set_rule(2, 1, LinkRule(blocked=True))  # another sender's link: calls still pass
        assert await ttl(10) == 7
        mesh.heal()
        mesh.set_rule(0, 1, LinkRule(blocked=True))
        with pytest.raises(PeerUnreachableError):
            await ttl(1)
        mesh.heal()
        with anyio.fail_after(30):
            while True:  # the frozen connection was reset; the next call redials
                try:
                    assert await ttl(5) == 7
                    break
                except PeerUnreachableError:
                    await anyio.sleep(0.1)
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
        await transport.close()
        mesh.stop()

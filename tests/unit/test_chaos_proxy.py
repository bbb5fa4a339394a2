"""The peer-link proxy: pass-through, per-direction blocking, delay, loss, heal."""

from __future__ import annotations

import contextlib
import socket
import socketserver
import threading
import time
from collections.abc import Iterator

import pytest

from kvstore.chaos.proxy import LinkRule, ProxyMesh
from kvstore.testing.ports import free_ports

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

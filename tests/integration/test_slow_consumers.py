"""Watchers whose client never reads: the member's memory stays bounded, and each slow
watcher is handled as etcd does (unsynced, then caught up or cancelled with the
compacted revision) once its client reads again.

The client is a raw HTTP/2 connection that grants the member a 1 KiB window per
stream and never more until told to, as a client that stopped reading would: the
member can send it almost nothing, and everything it would have sent must wait
somewhere bounded.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import socket
import struct
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc

from kvstore._pb.etcdserverpb import rpc_pb2, rpc_pb2_grpc
from kvstore.cli.bench_hostile import rss_mib
from kvstore.local.cluster import KVCluster
from kvstore.rpc import frames as fr

STREAMS = 10
WATCHERS_PER_STREAM = 100
PUTS = 1500
VALUE = b"v" * 256
STALLED_WINDOW = 1024
MAX_RSS_GROWTH_MIB = 100
"""Unbounded, the member would hold each event once per watcher: 1,500 puts to 1,000
watchers of 300-byte events is 450 MiB."""
_FRAME = struct.Struct(">I")


class StalledClient:
    """gRPC Watch streams over one raw connection that reads nothing until ``drain``."""

    def __init__(self, host: str, port: int) -> None:
        self.sock = socket.create_connection((host, port))
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        settings = {fr.Setting.INITIAL_WINDOW_SIZE: STALLED_WINDOW, fr.Setting.ENABLE_PUSH: 0}
        self.sock.sendall(fr.PREFACE + fr.settings_frame(settings))
        self.authority = f"{host}:{port}".encode()

    def open_watch(self, stream_id: int, creates: int, key: bytes, end: bytes) -> None:
        block = b"".join(
            fr.literal(name, value)
            for name, value in (
                (b":method", b"POST"),
                (b":scheme", b"http"),
                (b":path", b"/etcdserverpb.Watch/Watch"),
                (b":authority", self.authority),
                (b"content-type", b"application/grpc"),
                (b"te", b"trailers"),
            )
        )
        msg = rpc_pb2.WatchRequest(
            create_request=rpc_pb2.WatchCreateRequest(key=key, range_end=end)
        ).SerializeToString()
        data = (b"\x00" + _FRAME.pack(len(msg)) + msg) * creates
        self.sock.sendall(
            fr.frame(fr.FrameType.HEADERS, fr.END_HEADERS, stream_id, block)
            + fr.frame(fr.FrameType.DATA, 0, stream_id, data)
        )

    def drain(
        self,
        stream_ids: list[int],
        done: Callable[[dict[int, list[rpc_pb2.WatchResponse]]], bool],
        timeout: float,
    ) -> dict[int, list[rpc_pb2.WatchResponse]]:
        """Read again: open the windows wide and read every stream's responses until
        ``done`` says so (or ``timeout``)."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        # A gigabyte each: more than the test reads.
        self.sock.sendall(
            fr.frame(fr.FrameType.SETTINGS, fr.ACK, 0)
            + fr.window_update(0, (1 << 30) - fr.DEFAULT_WINDOW)
            + b"".join(fr.window_update(s, (1 << 30) - STALLED_WINDOW) for s in stream_ids)
        )
        got: dict[int, list[rpc_pb2.WatchResponse]] = {s: [] for s in stream_ids}
        pending: dict[int, bytes] = {s: b"" for s in stream_ids}
        buf = b""
        self.sock.settimeout(0.5)
        end = time.monotonic() + timeout
        check = 0.0
        while time.monotonic() < end:
            if time.monotonic() >= check:  # (done() reads everything: not after every chunk)
                if done(got):
                    break
                check = time.monotonic() + 0.5
            try:
                chunk = self.sock.recv(1 << 20)
            except TimeoutError:
                continue
            if not chunk:
                break
            buf += chunk
            at = 0
            while len(buf) - at >= fr.FRAME_HEADER_BYTES:
                length = int.from_bytes(buf[at : at + 3], "big")
                start = at + fr.FRAME_HEADER_BYTES
                if len(buf) < start + length:
                    break
                kind, flags = buf[at + 3], buf[at + 4]
                sid = _FRAME.unpack_from(buf, at + 5)[0] & 0x7FFFFFFF
                payload = buf[start : start + length]
                at = start + length
                if kind == fr.FrameType.PING and not flags & fr.ACK:
                    self.sock.sendall(fr.frame(fr.FrameType.PING, fr.ACK, 0, payload))
                if kind != fr.FrameType.DATA or sid not in pending:
                    continue
                data = pending[sid] + payload
                while len(data) >= 5 and len(data) >= 5 + _FRAME.unpack_from(data, 1)[0]:
                    n = _FRAME.unpack_from(data, 1)[0]
                    got[sid].append(rpc_pb2.WatchResponse.FromString(data[5 : 5 + n]))
                    data = data[5 + n :]
                pending[sid] = data
            buf = buf[at:]
        return got

    def close(self) -> None:
        self.sock.close()


@contextlib.contextmanager
def _one_member(tmp_path: Path) -> Iterator[tuple[int, str, int, rpc_pb2_grpc.KVStub]]:
    """A one-member cluster with a key under /busy/: its pid, host, port and a KV stub."""
    with KVCluster(root=tmp_path / "kv1", size=1) as c:  # (started by the with)
        member = c.members[0]
        assert member.process is not None
        host, port = member.endpoint.split(":")
        with grpc.insecure_channel(member.endpoint) as channel:
            kv = rpc_pb2_grpc.KVStub(channel)  # type: ignore[no-untyped-call]
            kv.Put(rpc_pb2.PutRequest(key=b"/busy/0", value=VALUE), timeout=10)
            yield member.process.pid, host, int(port), kv


def _stalled_watchers(
    host: str, port: int, streams: int, per_stream: int
) -> tuple[StalledClient, list[int]]:
    """``streams`` Watch streams of ``per_stream`` watchers on /busy/, never read."""
    client = StalledClient(host, port)
    stream_ids = [1 + 2 * i for i in range(streams)]
    for sid in stream_ids:
        client.open_watch(sid, per_stream, b"/busy/", b"/busy0")
    return client, stream_ids


def _put_busy(kv: rpc_pb2_grpc.KVStub, count: int) -> None:
    """``count`` puts on 100 keys under /busy/, 8 at a time."""
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(
            pool.map(
                lambda i: kv.Put(
                    rpc_pb2.PutRequest(key=b"/busy/%d" % (i % 100), value=VALUE), timeout=30
                ),
                range(count),
            )
        )


def test_watchers_that_never_read_hold_bounded_memory_and_end_as_etcd_says(
    tmp_path: Path,
) -> None:
    with _one_member(tmp_path) as (pid, host, port, kv):
        before = rss_mib(pid)
        client, stream_ids = _stalled_watchers(host, port, STREAMS, WATCHERS_PER_STREAM)
        _put_busy(kv, PUTS)
        grown = rss_mib(pid) - before
        assert grown < MAX_RSS_GROWTH_MIB, f"the member grew {grown:.0f} MiB"
        last = kv.Range(rpc_pb2.RangeRequest(key=b"/busy/0"), timeout=10).header.revision
        kv.Compact(rpc_pb2.CompactionRequest(revision=last), timeout=10)
        # The member still serves others meanwhile.
        assert kv.Range(rpc_pb2.RangeRequest(key=b"/busy/0"), timeout=10).count == 1

        def outcome(
            got: dict[int, list[rpc_pb2.WatchResponse]],
        ) -> dict[tuple[int, int], str]:
            """(stream, watch) -> "cancelled" or "caught up", for those that are."""
            ended: dict[tuple[int, int], str] = {}
            for sid, responses in got.items():
                for r in responses:
                    if r.canceled:
                        ended[sid, r.watch_id] = "cancelled"
                    elif any(e.kv.mod_revision == last for e in r.events):
                        ended[sid, r.watch_id] = "caught up"
            return ended

        got = client.drain(
            stream_ids,
            lambda g: len(outcome(g)) == STREAMS * WATCHERS_PER_STREAM,
            timeout=60,
        )
        client.close()
        # Every watcher of every stream was created, then either caught up to the last
        # revision (its events in order, none lost) or cancelled with the compaction.
        cancelled = caught_up = 0
        for sid in stream_ids:
            responses = got[sid]
            created = [r.watch_id for r in responses if r.created]
            assert len(created) == WATCHERS_PER_STREAM, (sid, len(created))
            for wid in created:
                mine = [r for r in responses if r.watch_id == wid and not r.created]
                if any(r.canceled for r in mine):
                    assert [r.compact_revision for r in mine if r.canceled] == [last]
                    cancelled += 1
                    continue
                revs = [e.kv.mod_revision for r in mine for e in r.events]
                assert revs == sorted(revs) and len(set(revs)) == len(revs)
                assert revs and revs[-1] == last, (sid, wid, revs[-3:])
                caught_up += 1
        assert cancelled + caught_up == STREAMS * WATCHERS_PER_STREAM
        assert cancelled > 0, "no watcher fell behind the compaction: the test proves nothing"


MANY_STREAMS = 300
WATCHERS_PER_MANY = 5
MANY_PUTS = 800
MAX_MANY_GROWTH_MIB = 150
"""Each stalled stream holds at most its 64 KiB write quota and its outbox of 128
responses: measured, the member grew 58 MiB for 300 streams. With a 1 MiB quota (as
before) it grew 655 MiB."""


def test_many_streams_that_never_read_hold_a_bounded_queue_each(tmp_path: Path) -> None:
    """A client that opens hundreds of watch streams and reads none: each stream holds
    at most its write quota of the member's memory, whatever its window allows."""
    with _one_member(tmp_path) as (pid, host, port, kv):
        client, _ = _stalled_watchers(host, port, MANY_STREAMS, WATCHERS_PER_MANY)
        # Every watcher is created before the writes: a created response per watcher.
        kv.Put(rpc_pb2.PutRequest(key=b"/busy/0", value=VALUE), timeout=10)
        before = rss_mib(pid)
        _put_busy(kv, MANY_PUTS)
        # The member has queued all it may once a read behind the writes is answered
        # (its loop went through every stream's sending).
        kv.Range(rpc_pb2.RangeRequest(key=b"/busy/0"), timeout=30)
        grown = rss_mib(pid) - before
        client.close()
        assert grown < MAX_MANY_GROWTH_MIB, f"the member grew {grown:.0f} MiB"

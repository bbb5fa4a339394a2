"""The members' wire: length-prefixed frames on plain TCP (or TLS) connections.

Every connection opens with :data:`MAGIC` and a HELLO frame from the dialer
naming the cluster, the sender and what the connection carries; the listener
answers ACCEPT, or REFUSE with a reason and closes. A proxy on the link (the
chaos harness's fault proxy) reads the sender from those first bytes.

Frame: 4-byte big-endian length of what follows, 1-byte kind, payload.
"""

from __future__ import annotations

import asyncio
import enum
import struct

MAGIC = b"KVPEER1\n"
_HEAD = struct.Struct(">IB")
_HELLO = struct.Struct(">QQB")  # cluster id, sender id, stream kind
_CALL = struct.Struct(">QB")  # call id, method / status
MEMBER_REMOVED_MESSAGE = "the member has been permanently removed from the cluster"
"""etcd's words, sent to (and logged by) a member whose connections are refused after its
removal."""
SNAP_HEAD = struct.Struct(">Q")
"""A snapshot connection's first frame: the total size, then the MsgSnap (its data empty)."""
MAX_FRAME_BYTES = 64 * 1024 * 1024
"""Largest frame a member accepts (a batch of entries; snapshots travel in chunks)."""


class StreamKind(enum.IntEnum):
    """What a connection carries, said in its HELLO."""

    MESSAGES = 1
    """Raft messages, one way, batched per frame."""
    SNAPSHOT = 2
    """One MsgSnap in chunks, then the receiver's verdict."""
    CALLS = 3
    """Requests only the leader answers, and their replies (multiplexed by call id)."""


class FrameKind(enum.IntEnum):
    HELLO = 1
    ACCEPT = 2
    REFUSE = 3
    MESSAGES = 4
    SNAP_HEAD = 5
    SNAP_DATA = 6
    SNAP_DONE = 7
    CALL = 8
    REPLY = 9
    PING = 10
    PONG = 11


class PeerMethod(enum.IntEnum):
    """The calls a member answers for its peers."""

    LEASE_RENEW = 1
    LEASE_TIME_TO_LIVE = 2
    MEMBER_ADD = 3
    MEMBER_REMOVE = 4
    MEMBER_UPDATE = 5
    MEMBER_PROMOTE = 6
    MEMBER_LIST = 7
    HASH_KV = 8


class WireError(Exception):
    """The other side broke the protocol (or closed mid-frame)."""


def send(writer: asyncio.StreamWriter, data: bytes) -> None:
    """Write, or raise ConnectionResetError on a closed connection (on uvloop, writing
    to a closed transport raises RuntimeError; on asyncio's loop it is silently lost)."""
    if writer.is_closing():
        raise ConnectionResetError("connection closed")
    writer.write(data)


def frame(kind: FrameKind, payload: bytes = b"") -> bytes:
    return _HEAD.pack(len(payload) + 1, kind) + payload


def hello(cluster_id: int, sender: int, kind: StreamKind) -> bytes:
    """What a dialer writes first."""
    return MAGIC + frame(FrameKind.HELLO, _HELLO.pack(cluster_id, sender, kind))


def parse_hello(data: bytes) -> tuple[int, int, StreamKind] | None:
    """(cluster id, sender, kind) from a connection's first bytes; None while incomplete
    or when they are not a member's hello."""
    start = len(MAGIC)
    end = start + _HEAD.size + _HELLO.size
    if len(data) < end or not data.startswith(MAGIC):
        return None
    length, kind = _HEAD.unpack_from(data, start)
    if kind != FrameKind.HELLO or length != _HELLO.size + 1:
        return None
    cluster_id, sender, stream = _HELLO.unpack_from(data, start + _HEAD.size)
    try:
        return cluster_id, sender, StreamKind(stream)
    except ValueError:
        return None


def call_frame(call_id: int, method: PeerMethod, request: bytes) -> bytes:
    return frame(FrameKind.CALL, _CALL.pack(call_id, method) + request)


def reply_frame(call_id: int, status: int, body: bytes) -> bytes:
    """``status`` 0: ``body`` is the response; otherwise the error message (UTF-8)."""
    return frame(FrameKind.REPLY, _CALL.pack(call_id, status) + body)


def split_call(payload: bytes) -> tuple[int, int, bytes]:
    """(call id, method or status, body) of a CALL or REPLY payload."""
    if len(payload) < _CALL.size:
        raise WireError("short call frame")
    call_id, code = _CALL.unpack_from(payload)
    return call_id, code, payload[_CALL.size :]


async def read_frame(reader: asyncio.StreamReader) -> tuple[FrameKind, bytes]:
    try:
        head = await reader.readexactly(_HEAD.size)
        length, kind = _HEAD.unpack(head)
        if not 1 <= length <= MAX_FRAME_BYTES:
            raise WireError(f"bad frame length {length}")
        payload = await reader.readexactly(length - 1) if length > 1 else b""
    except asyncio.IncompleteReadError:
        raise WireError("connection closed mid-frame") from None
    try:
        return FrameKind(kind), payload
    except ValueError:
        raise WireError(f"unknown frame kind {kind}") from None


async def read_hello(reader: asyncio.StreamReader) -> tuple[int, int, StreamKind]:
    try:
        magic = await reader.readexactly(len(MAGIC))
    except asyncio.IncompleteReadError:
        raise WireError("connection closed before its hello") from None
    if magic != MAGIC:
        raise WireError("not a member's connection")
    kind, payload = await read_frame(reader)
    parsed = parse_hello(MAGIC + frame(kind, payload)) if kind == FrameKind.HELLO else None
    if parsed is None:
        raise WireError("bad hello")
    return parsed

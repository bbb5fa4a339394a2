"""Hostile gRPC requests for any etcd method, as hypothesis strategies, and a raw client.

A request is built from its message's descriptor: every field may be absent or
hold a value chosen to hurt (negative and extreme integers, unknown enum values,
empty and over-limit keys, keys from a small set so that requests meet each
other's data, nested transactions, long repeated fields). Besides valid
messages: raw garbage, and valid encodings truncated or with bytes flipped.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import grpc
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import DecodeError, Message
from hypothesis import strategies as st

from kvstore._pb.etcdserverpb import rpc_pb2

M = TypeVar("M", bound=Message)

MAX_REQUEST_BYTES = int(1.5 * 1024 * 1024)
"""etcd's default --max-request-bytes (both servers run with it)."""
KEYS = [b"", b"a", b"a/1", b"a/2", b"b", b"\x00", b"\xff", b"fuzz/x"]
"""Keys the requests share: a write and a later read or delete meet."""
LEASE_IDS = [0, 1, 7, -1, 2**62, 2**63 - 1]
"""Explicit lease IDs (both servers pick the same when asked for these)."""
LONG_TTL = 3600
MAX_LEASE_TTL = 9_000_000_000
"""etcd's MaxLeaseTTL: a longer one is refused."""
MAX_DEPTH = 3
"""Nesting of messages (a txn inside a txn inside a txn)."""

_INT_EDGES = {
    32: [0, 1, -1, 2, 3, 7, 128, 129, 2**31 - 1, -(2**31)],
    64: [0, 1, -1, 2, 3, 100, 2**31, 2**32, 2**62, 2**63 - 1, -(2**63), 9_000_000_000],
}
_UINT_EDGES = {32: [0, 1, 2, 2**31, 2**32 - 1], 64: [0, 1, 2, 2**63, 2**64 - 1]}
MAX_SEND_BYTES = 2 * MAX_REQUEST_BYTES
_HUGE = [MAX_REQUEST_BYTES + 1, 1024 * 1024]
"""Sizes of over-limit keys and values (one just past the request limit)."""


def _int_strategy(field: FieldDescriptor) -> st.SearchStrategy[int]:
    t = field.type
    if t in (FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_FIXED32):
        return st.sampled_from(_UINT_EDGES[32]) | st.integers(0, 2**32 - 1)
    if t in (FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_FIXED64):
        return st.sampled_from(_UINT_EDGES[64]) | st.integers(0, 2**64 - 1)
    bits = 32 if t in (FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_SINT32) else 64
    lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    if field.name == "TTL":
        # No lease that would expire during the run: its keys would go at slightly
        # different times on the two servers and their revisions part.
        # (A TTL of 0 or less means etcd's shortest, a few seconds: left to the lease tests.)
        return st.sampled_from([hi, LONG_TTL, MAX_LEASE_TTL, MAX_LEASE_TTL + 1]) | st.integers(
            LONG_TTL, hi
        )
    small = st.integers(-3, 20)
    if field.name in ("ID", "lease", "id"):
        small = st.sampled_from([i for i in LEASE_IDS if lo <= i <= hi])
    return st.sampled_from(_INT_EDGES[bits]) | small | st.integers(lo, hi)


@st.composite
def _bytes_strategy(draw: st.DrawFn) -> bytes:
    pick = draw(st.integers(0, 19))
    if pick == 0:
        return b"k" * draw(st.sampled_from(_HUGE))  # rarely: each costs a megabyte or two
    if pick < 6:
        return draw(st.binary(max_size=24))
    return draw(st.sampled_from(KEYS))


def _string_strategy(field: FieldDescriptor) -> st.SearchStrategy[str]:
    return st.one_of(
        st.sampled_from(["", "http://127.0.0.1:1", "unix://x", "http://", "::", "a" * 300]),
        st.text(max_size=16),
    )


def _scalar(field: FieldDescriptor, depth: int) -> st.SearchStrategy[Any]:
    t = field.type
    if t == FieldDescriptor.TYPE_MESSAGE:
        assert field.message_type is not None
        return messages(field.message_type, depth + 1)
    if t == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if t == FieldDescriptor.TYPE_ENUM:
        assert field.enum_type is not None
        known = [v.number for v in field.enum_type.values]
        return st.sampled_from(known) | st.integers(-3, 12)  # unknown values too
    if t == FieldDescriptor.TYPE_BYTES:
        return _bytes_strategy()
    if t == FieldDescriptor.TYPE_STRING:
        return _string_strategy(field)
    if t in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return st.floats(allow_nan=True, width=32 if t == FieldDescriptor.TYPE_FLOAT else 64)
    return _int_strategy(field)


def _size(value: Any) -> int:
    return len(value) if isinstance(value, (bytes, str)) else 8


def _copies(size: int, wanted: int) -> int:
    """``wanted`` copies (past max-txn-ops), unless together they would pass what may be
    sent: nested txns of 129 copies of 129 copies of a 1 MiB key once made a request of
    gigabytes, and the soak's test process ran out of memory building it."""
    return wanted if size * wanted <= MAX_SEND_BYTES else max(1, MAX_SEND_BYTES // max(size, 1))


@st.composite
def _message(draw: st.DrawFn, desc: Descriptor, depth: int) -> Message:
    from google.protobuf import message_factory

    msg = message_factory.GetMessageClass(desc)()
    for field in desc.fields:
        if field.type == FieldDescriptor.TYPE_MESSAGE and depth >= MAX_DEPTH:
            continue
        if not draw(st.booleans()):
            continue
        values = _scalar(field, depth)
        if field.is_repeated:
            if field.type != FieldDescriptor.TYPE_MESSAGE and draw(st.integers(0, 9)) == 0:
                one = draw(values)
                items = [one] * _copies(_size(one), draw(st.sampled_from([129, 1000])))
            elif field.type == FieldDescriptor.TYPE_MESSAGE and draw(st.integers(0, 9)) == 0:
                one = draw(values)
                items = [one] * _copies(one.ByteSize(), draw(st.sampled_from([128, 129])))
            else:
                items = draw(st.lists(values, max_size=3))
            target = getattr(msg, field.name)
            if field.type == FieldDescriptor.TYPE_MESSAGE:
                for item in items:
                    target.add().CopyFrom(item)
            else:
                target.extend(items)
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            getattr(msg, field.name).CopyFrom(draw(values))
        else:
            setattr(msg, field.name, draw(values))
    return msg


def messages(desc: Descriptor, depth: int = 0) -> st.SearchStrategy[Message]:
    return _message(desc, depth)


@st.composite
def _mutated(draw: st.DrawFn, desc: Descriptor) -> bytes:
    data = bytearray(draw(messages(desc)).SerializeToString()[:4096])
    if not data:
        return draw(st.binary(min_size=1, max_size=8))
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, len(data) - 1))
        data[i] = draw(st.integers(0, 255))
    if draw(st.booleans()):
        data = data[: draw(st.integers(0, len(data)))]
    return bytes(data)


def payloads(desc: Descriptor) -> st.SearchStrategy[bytes]:
    """Bytes to send as one request of ``desc``'s type: mostly valid, some broken; never
    more than a client would send (grpc's own limit is 4 MiB)."""
    valid = messages(desc).map(lambda m: m.SerializeToString())
    data = st.one_of(valid, valid, valid, st.binary(max_size=64), _mutated(desc))
    return data.filter(lambda b: len(b) <= MAX_SEND_BYTES)


def decoded(request_type: type[M], data: bytes) -> M | None:
    """``data`` as a ``request_type``, or None when it does not decode."""
    try:
        return request_type.FromString(data)
    except DecodeError:
        return None


# ---------------------------------------------------------------------- raw calls


@dataclasses.dataclass(frozen=True)
class Outcome:
    """How a call ended: its status, and for streams what came back before."""

    code: grpc.StatusCode
    message: str
    responses: tuple[bytes, ...] = ()

    @property
    def ok(self) -> bool:
        return bool(self.code == grpc.StatusCode.OK)


def _identity(b: bytes) -> bytes:
    return b


class RawClient:
    """Sends bytes as they are to any method of one server (a gRPC channel per server)."""

    def __init__(self, endpoint: str) -> None:
        target = endpoint.split("://", 1)[-1]
        self.channel = grpc.insecure_channel(
            target,
            options=[
                ("grpc.max_send_message_length", 8 * 1024 * 1024),
                ("grpc.max_receive_message_length", 64 * 1024 * 1024),
            ],
        )

    def close(self) -> None:
        self.channel.close()

    def unary(self, path: str, data: bytes, timeout: float) -> Outcome:
        call: Callable[..., Any] = self.channel.unary_unary(
            path, request_serializer=_identity, response_deserializer=_identity
        )
        try:
            resp = call(data, timeout=timeout)
        except grpc.RpcError as exc:
            return Outcome(exc.code(), exc.details() or "")
        return Outcome(grpc.StatusCode.OK, "", (resp,))

    def server_stream(self, path: str, data: bytes, timeout: float) -> Outcome:
        call: Callable[..., Any] = self.channel.unary_stream(
            path, request_serializer=_identity, response_deserializer=_identity
        )
        got: list[bytes] = []
        it = call(data, timeout=timeout)
        try:
            for resp in it:
                got.append(resp)
        except grpc.RpcError as exc:
            return Outcome(exc.code(), exc.details() or "", tuple(got))
        return Outcome(grpc.StatusCode.OK, "", tuple(got))

    def bidi(
        self,
        path: str,
        requests: list[bytes],
        enough: Callable[[list[bytes]], bool],
        timeout: float,
    ) -> Outcome:
        """Send ``requests`` (the stream stays open), read until ``enough(responses)``,
        then cancel; an error status or the deadline ends it sooner."""
        call: Callable[..., Any] = self.channel.stream_stream(
            path, request_serializer=_identity, response_deserializer=_identity
        )
        done = [False]

        def source() -> Iterator[bytes]:
            yield from requests
            while not done[0]:  # keep our side open, as a client that waits would
                time.sleep(0.01)

        it = call(source(), timeout=timeout)
        got: list[bytes] = []
        try:
            for resp in it:
                got.append(resp)
                if enough(got):
                    done[0] = True
                    it.cancel()
                    return Outcome(grpc.StatusCode.OK, "", tuple(got))
        except grpc.RpcError as exc:
            return Outcome(exc.code(), exc.details() or "", tuple(got))
        finally:
            done[0] = True
        return Outcome(grpc.StatusCode.OK, "", tuple(got))


def fingerprint(client: RawClient) -> tuple[object, ...]:
    """What a rejected write must leave as it was: the key space's hash and revision, the
    compaction, the leases and the members."""
    hk = client.unary("/etcdserverpb.Maintenance/HashKV", b"", 10)
    leases = client.unary("/etcdserverpb.Lease/LeaseLeases", b"", 10)
    members = client.unary("/etcdserverpb.Cluster/MemberList", b"", 10)
    for out in (hk, leases, members):
        assert out.ok, out
    h = rpc_pb2.HashKVResponse.FromString(hk.responses[0])
    ids = sorted(x.ID for x in rpc_pb2.LeaseLeasesResponse.FromString(leases.responses[0]).leases)
    ms = rpc_pb2.MemberListResponse.FromString(members.responses[0]).members
    return (
        h.hash,
        h.header.revision,
        h.compact_revision,
        tuple(ids),
        tuple(sorted((m.ID, m.isLearner, tuple(m.peerURLs)) for m in ms)),
    )

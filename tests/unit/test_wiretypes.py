"""Known fields sent with another wire type are refused with gogo/protobuf's words (etcd's
decoders); unknown fields and non-canonical encodings of the right types are not."""

from __future__ import annotations

import pytest
from google.protobuf.message import DecodeError

from kvstore._pb.etcdserverpb import rpc_pb2
from kvstore.rpc.wiretypes import decode_strictly, go_field_name


@pytest.mark.parametrize(
    ("proto", "go"),
    [
        ("key", "Key"),
        ("range_end", "RangeEnd"),
        ("ID", "ID"),
        ("TTL", "TTL"),
        ("clientURLs", "ClientURLs"),
        ("physical", "Physical"),
        ("field_2", "Field_2"),
        ("a1b", "A1B"),
    ],
)
def test_go_field_names(proto: str, go: str) -> None:
    assert go_field_name(proto) == go


@pytest.mark.parametrize(
    ("message_type", "data", "error"),
    [
        # (the first three were found by the fuzz soak: etcd refused them, we acted on them)
        (rpc_pb2.RangeRequest, b"\x08\x00", "proto: wrong wireType = 0 for field Key"),
        (
            rpc_pb2.DeleteRangeRequest,
            b"\x0a\x01a\x11" + bytes(8),
            "wrong wireType = 1 for field RangeEnd",
        ),
        (
            rpc_pb2.LeaseTimeToLiveRequest,
            b"\x15\x00\x00\x00\x00",
            "wrong wireType = 5 for field Keys",
        ),
        # Nested: the Compare inside a Txn, as etcd's decoder recurses into it.
        (rpc_pb2.TxnRequest, b"\x0a\x04\x08\x00\x12\x00", "wrong wireType = 2 for field Target"),
        (rpc_pb2.TxnRequest, b"\x12\x02\x08\x01", "wrong wireType = 0 for field RequestRange"),
        (
            rpc_pb2.StatusRequest,
            b"\x00\x00",
            r"proto: StatusRequest: illegal tag 0 \(wire type 0\)",
        ),
    ],
)
def test_a_known_field_of_another_wire_type_is_refused(
    message_type: type, data: bytes, error: str
) -> None:
    with pytest.raises(DecodeError, match=error):
        decode_strictly(message_type, data)


def test_what_etcd_takes_is_taken() -> None:
    # An unknown field (number 31, varint) is skipped, and dropped.
    got = decode_strictly(rpc_pb2.RangeRequest, b"\x0a\x01a\xf8\x01\x05")
    assert got == rpc_pb2.RangeRequest(key=b"a")
    assert got.ByteSize() == 3
    # A default written out, and a field sent twice (the last wins).
    assert decode_strictly(rpc_pb2.RangeRequest, b"\x0a\x01a\x18\x00") == rpc_pb2.RangeRequest(
        key=b"a"
    )
    assert decode_strictly(rpc_pb2.RangeRequest, b"\x0a\x01a\x0a\x01b").key == b"b"
    # A repeated varint field may come packed (wire type 2) or not.
    create = rpc_pb2.WatchCreateRequest
    unpacked = create(filters=[create.NOPUT, create.NODELETE])
    data = unpacked.SerializeToString()
    assert decode_strictly(rpc_pb2.WatchCreateRequest, data) == unpacked
    assert decode_strictly(rpc_pb2.WatchCreateRequest, b"\x28\x00\x28\x01") == unpacked

"""Known fields sent with the wrong wire type (and field number 0): refused, as etcd's
generated decoders do.

etcd's request types are decoded by gogo/protobuf's generated code, which fails a
message whose known field arrives with another wire type than its type's
(``proto: wrong wireType = 0 for field Key``); gRPC answers INTERNAL. Python's
protobuf keeps such a field as an unknown one and decodes the rest, so without this
check we would act on a request etcd refuses. Unknown field numbers are skipped by
both. Only a message that did not decode to exactly its own bytes is walked (see
:func:`decode_strictly`), so well-formed requests pay one size comparison.
"""

from __future__ import annotations

from typing import Any, TypeVar

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import DecodeError, Message

M = TypeVar("M", bound=Message)

_VARINT, _FIXED64, _LENGTH, _START_GROUP, _END_GROUP, _FIXED32 = 0, 1, 2, 3, 4, 5
_FD = FieldDescriptor
_WIRE_TYPE = {
    _FD.TYPE_DOUBLE: _FIXED64,
    _FD.TYPE_FLOAT: _FIXED32,
    _FD.TYPE_INT64: _VARINT,
    _FD.TYPE_UINT64: _VARINT,
    _FD.TYPE_INT32: _VARINT,
    _FD.TYPE_FIXED64: _FIXED64,
    _FD.TYPE_FIXED32: _FIXED32,
    _FD.TYPE_BOOL: _VARINT,
    _FD.TYPE_STRING: _LENGTH,
    _FD.TYPE_GROUP: _START_GROUP,
    _FD.TYPE_MESSAGE: _LENGTH,
    _FD.TYPE_BYTES: _LENGTH,
    _FD.TYPE_UINT32: _VARINT,
    _FD.TYPE_ENUM: _VARINT,
    _FD.TYPE_SFIXED32: _FIXED32,
    _FD.TYPE_SFIXED64: _FIXED64,
    _FD.TYPE_SINT32: _VARINT,
    _FD.TYPE_SINT64: _VARINT,
}


class _Malformed(Exception):
    """The bytes break the wire format itself: left to the protobuf decoder's verdict."""


def go_field_name(proto_name: str) -> str:
    """The name Go's protobuf generator gives a field (``range_end`` -> ``RangeEnd``)."""
    out: list[str] = []
    i, n = 0, len(proto_name)
    if proto_name.startswith("_"):
        out.append("X")
        i = 1
    while i < n:
        c = proto_name[i]
        if c == "_" and i + 1 < n and proto_name[i + 1].islower():
            i += 1
            continue
        if c.isdigit():
            out.append(c)
            i += 1
            continue
        out.append(c.upper() if c.islower() else c)
        i += 1
        while i < n and proto_name[i].islower():
            out.append(proto_name[i])
            i += 1
    return "".join(out)


def _varint(data: memoryview, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise _Malformed
        b = data[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, pos
        shift += 7


def _wrong_wire_type(desc: Any, data: memoryview) -> str | None:
    """``desc``: a message Descriptor (upb's or the Python one)."""
    pos, end = 0, len(data)
    while pos < end:
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        if number == 0:
            return f"proto: {desc.name}: illegal tag 0 (wire type {wire})"
        field = desc.fields_by_number.get(number)
        if field is not None:
            want = _WIRE_TYPE[field.type]
            packed = wire == _LENGTH and field.is_repeated and want != _LENGTH
            if wire != want and not packed:
                return f"proto: wrong wireType = {wire} for field {go_field_name(field.name)}"
        if wire == _VARINT:
            _, pos = _varint(data, pos)
        elif wire == _FIXED64:
            pos += 8
        elif wire == _FIXED32:
            pos += 4
        elif wire == _LENGTH:
            size, pos = _varint(data, pos)
            if pos + size > end:
                raise _Malformed
            inner_type = field.message_type if field is not None else None
            if inner_type is not None:
                inner = _wrong_wire_type(inner_type, data[pos : pos + size])
                if inner is not None:
                    return inner
            pos += size
        else:
            raise _Malformed  # groups: no etcd request has one
    return None


def decode_strictly(message_type: type[M], data: bytes) -> M:
    """Decode ``data``; DecodeError (with gogo's words) where etcd would refuse it."""
    message = message_type.FromString(data)
    message.DiscardUnknownFields()  # (what etcd's decoder skips, we drop too)
    if message.ByteSize() != len(data):
        # Not its own canonical encoding: unknown fields (a known one of another wire type
        # is kept as one), defaults written out, fields repeated.
        try:
            wrong = _wrong_wire_type(message.DESCRIPTOR, memoryview(data))
        except _Malformed:
            wrong = None
        if wrong is not None:
            raise DecodeError(wrong)
    return message

"""Protobuf messages as etcd's gateway writes and reads them in JSON.

etcd 3.5's gateway (grpc-gateway v1 with golang/protobuf's jsonpb,
``OrigName: true``) writes:

- proto field names (``create_revision``, ``TTL``, ``clientURLs``), in
  declaration order (ours equals field-number order for every etcd message);
- only populated fields: zero scalars, empty lists and unset messages are left out;
- 64-bit integers as decimal strings, 32-bit ones as numbers;
- bytes as standard base64, enums by name (by number when unnamed);
- strings the way Go's json.Marshal escapes them.

It reads either field name (proto or camelCase; the camelCase one wins when
both are given), integers as numbers or strings, enums by name or number,
ignores unknown fields and takes ``null`` as absent; errors are Go's (see
:mod:`kvstore.gateway.gojson`), checked in declaration order like jsonpb.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from kvstore.gateway import gojson
from kvstore.gateway.gojson import GoJSONError

_T = FieldDescriptor
_INT64_TYPES = {_T.TYPE_INT64, _T.TYPE_SINT64, _T.TYPE_SFIXED64}
_UINT64_TYPES = {_T.TYPE_UINT64, _T.TYPE_FIXED64}
_INT32_TYPES = {_T.TYPE_INT32, _T.TYPE_SINT32, _T.TYPE_SFIXED32}
_UINT32_TYPES = {_T.TYPE_UINT32, _T.TYPE_FIXED32}
_GO_INT_TYPE = {
    **dict.fromkeys(_INT64_TYPES, "int64"),
    **dict.fromkeys(_UINT64_TYPES, "uint64"),
    **dict.fromkeys(_INT32_TYPES, "int32"),
    **dict.fromkeys(_UINT32_TYPES, "uint32"),
}

# ----- encoding

_Encoder = Callable[[Any], str]
_field_encoders: dict[FieldDescriptor, _Encoder] = {}


def encode(message: Message) -> str:
    """``message`` as etcd's gateway writes it."""
    return _encode_message(message)


def _encode_message(message: Message) -> str:
    parts = []
    for field, value in message.ListFields():
        encoder = _field_encoders.get(field)
        if encoder is None:
            encoder = _field_encoders[field] = _field_encoder(field)
        parts.append(encoder(value))
    return "{" + ",".join(parts) + "}"


def _field_encoder(field: FieldDescriptor) -> _Encoder:
    prefix = gojson.quote(field.name) + ":"
    encode_value = _value_encoder(field)
    if field.is_repeated:
        return lambda values: prefix + "[" + ",".join(map(encode_value, values)) + "]"
    return lambda value: prefix + encode_value(value)


def _value_encoder(field: FieldDescriptor) -> _Encoder:
    kind = field.type
    if kind == _T.TYPE_MESSAGE:
        return _encode_message
    if kind in _INT64_TYPES or kind in _UINT64_TYPES:
        return lambda value: f'"{value}"'
    if kind in _INT32_TYPES or kind in _UINT32_TYPES:
        return str
    if kind == _T.TYPE_BOOL:
        return lambda value: "true" if value else "false"
    if kind == _T.TYPE_STRING:
        return gojson.quote
    if kind == _T.TYPE_BYTES:
        return lambda value: '"' + base64.b64encode(value).decode() + '"'
    if kind == _T.TYPE_ENUM:
        enum = field.enum_type
        assert enum is not None
        names = {v.number: f'"{v.name}"' for v in enum.values}
        return lambda value: names.get(value) or str(value)
    raise TypeError(f"{field.full_name}: no JSON encoding for field type {kind} (unused by etcd)")


# ----- decoding

_Setter = Callable[[Message, object], None]


class _FieldSpec:
    __slots__ = ("json_name", "name", "set")

    def __init__(self, field: FieldDescriptor) -> None:
        self.name = field.name
        self.json_name = field.json_name if field.json_name != field.name else None
        self.set = _setter(field)


_field_specs: dict[Any, list[_FieldSpec]] = {}
"""Message descriptor -> how to set each of its fields, in declaration order."""


def decode(body: bytes, message: Message) -> None:
    """Fill ``message`` from the first JSON value of ``body`` (none: left empty).

    Raises :class:`GoJSONError` with the gateway's message on bad input.
    """
    found, value = gojson.decode_first(body)
    if found:
        decode_value(value, message)


def decode_value(value: object, message: Message) -> None:
    """Fill ``message`` from a decoded JSON value (see :func:`gojson.loads`)."""
    if value is None:
        return  # jsonpb takes a null message as no change
    if not isinstance(value, dict):
        raise gojson.type_error(value, "map[string]json.RawMessage")
    specs = _field_specs.get(message.DESCRIPTOR)
    if specs is None:
        specs = _field_specs[message.DESCRIPTOR] = [
            _FieldSpec(f)  # type: ignore[arg-type]  # (upb's descriptor type)
            for f in message.DESCRIPTOR.fields
        ]
    for spec in specs:
        raw = value.get(spec.name)
        if spec.json_name is not None and spec.json_name in value:
            raw = value[spec.json_name]
        if raw is not None:
            spec.set(message, raw)


def _setter(field: FieldDescriptor) -> _Setter:
    name = field.name
    if field.type == _T.TYPE_MESSAGE:
        if field.is_repeated:

            def set_messages(message: Message, raw: object) -> None:
                items = getattr(message, name)
                for item in _as_list(raw):
                    decode_value(item, items.add())

            return set_messages

        def set_message(message: Message, raw: object) -> None:
            child = getattr(message, name)
            decode_value(raw, child)
            child.SetInParent()  # present even when empty, as jsonpb sets it

        return set_message
    convert = _converter(field)
    if field.is_repeated:

        def set_list(message: Message, raw: object) -> None:
            getattr(message, name).extend([convert(item) for item in _as_list(raw)])

        return set_list

    def set_scalar(message: Message, raw: object) -> None:
        setattr(message, name, convert(raw))

    return set_scalar


def _as_list(raw: object) -> list[object]:
    if not isinstance(raw, list):
        raise gojson.type_error(raw, "[]json.RawMessage")
    return raw


def _converter(field: FieldDescriptor) -> Callable[[object], Any]:
    kind = field.type
    go_int = _GO_INT_TYPE.get(kind)
    if go_int is not None:
        return lambda raw: _to_int(raw, go_int)
    if kind == _T.TYPE_BOOL:
        return gojson.to_bool
    if kind == _T.TYPE_STRING:
        return gojson.to_string
    if kind == _T.TYPE_BYTES:
        return gojson.to_bytes
    if kind == _T.TYPE_ENUM:
        enum = field.enum_type
        assert enum is not None
        numbers = {v.name: v.number for v in enum.values}
        enum_name = enum.full_name

        def to_enum(raw: object) -> int:
            if isinstance(raw, str) and not isinstance(raw, gojson.Number):
                number = numbers.get(raw)
                if number is None:
                    quoted = gojson.strconv_quote(_as_written(raw))
                    raise GoJSONError(f"unknown value {quoted} for enum {enum_name}")
                return number
            return gojson.to_int(raw, "protoreflect.EnumNumber")

        return to_enum
    raise TypeError(f"{field.full_name}: no JSON decoding for field type {kind} (unused by etcd)")


def _to_int(raw: object, go_type: str) -> int:
    """jsonpb strips a string's quotes and parses what is left as a JSON value."""
    if isinstance(raw, str) and not isinstance(raw, gojson.Number):
        if raw.isdigit() and raw.isascii() and (raw[0] != "0" or raw == "0"):
            return gojson.to_int(gojson.Number(raw), go_type)
        raw = gojson.unmarshal(_as_written(raw)[1:-1].encode())
    return gojson.to_int(raw, go_type)


def _as_written(text: str) -> str:
    """A JSON string as a client most likely wrote it (jsonpb quotes the raw input in errors).

    The raw text is gone once parsed; the shortest encoding matches it unless the
    client escaped characters it did not have to.
    """
    return json.dumps(text, ensure_ascii=False)

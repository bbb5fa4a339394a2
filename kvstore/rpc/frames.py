"""HTTP/2 framing (RFC 9113) and the few HPACK encodings (RFC 7541) a gRPC server sends.

Request header blocks are decoded by the ``hpack`` library; the server's own
header blocks are fixed or nearly so, so they are encoded here as literals
that never touch the dynamic table (stateless: any number may be sent in any
order).
"""

from __future__ import annotations

import enum
import struct


class FrameType(enum.IntEnum):
    DATA = 0x0
    HEADERS = 0x1
    PRIORITY = 0x2
    RST_STREAM = 0x3
    SETTINGS = 0x4
    PUSH_PROMISE = 0x5
    PING = 0x6
    GOAWAY = 0x7
    WINDOW_UPDATE = 0x8
    CONTINUATION = 0x9


class Setting(enum.IntEnum):
    HEADER_TABLE_SIZE = 0x1
    ENABLE_PUSH = 0x2
    MAX_CONCURRENT_STREAMS = 0x3
    INITIAL_WINDOW_SIZE = 0x4
    MAX_FRAME_SIZE = 0x5
    MAX_HEADER_LIST_SIZE = 0x6


class ErrorCode(enum.IntEnum):
    NO_ERROR = 0x0
    PROTOCOL_ERROR = 0x1
    INTERNAL_ERROR = 0x2
    FLOW_CONTROL_ERROR = 0x3
    SETTINGS_TIMEOUT = 0x4
    STREAM_CLOSED = 0x5
    FRAME_SIZE_ERROR = 0x6
    REFUSED_STREAM = 0x7
    CANCEL = 0x8
    COMPRESSION_ERROR = 0x9
    ENHANCE_YOUR_CALM = 0xB


END_STREAM = 0x1
ACK = 0x1
END_HEADERS = 0x4
PADDED = 0x8
PRIORITY_FLAG = 0x20

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
FRAME_HEADER_BYTES = 9
DEFAULT_WINDOW = 65535
DEFAULT_MAX_FRAME = 16384
MAX_WINDOW = 2**31 - 1
MAX_FRAME_LIMIT = 2**24 - 1

_U32 = struct.Struct(">I")
_SETTING = struct.Struct(">HI")
_GOAWAY = struct.Struct(">II")


def frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    """One frame: the 9-byte header then ``payload``."""
    n = len(payload)
    return bytes((n >> 16, (n >> 8) & 0xFF, n & 0xFF, kind, flags)) + _U32.pack(stream_id) + payload


def settings_frame(settings: dict[Setting, int]) -> bytes:
    return frame(
        FrameType.SETTINGS, 0, 0, b"".join(_SETTING.pack(k, v) for k, v in settings.items())
    )


def parse_settings(payload: bytes) -> list[tuple[int, int]]:
    return [_SETTING.unpack_from(payload, i) for i in range(0, len(payload), _SETTING.size)]


def window_update(stream_id: int, increment: int) -> bytes:
    return frame(FrameType.WINDOW_UPDATE, 0, stream_id, _U32.pack(increment))


def rst_stream(stream_id: int, code: ErrorCode) -> bytes:
    return frame(FrameType.RST_STREAM, 0, stream_id, _U32.pack(code))


def goaway(last_stream_id: int, code: ErrorCode, debug: bytes = b"") -> bytes:
    return frame(FrameType.GOAWAY, 0, 0, _GOAWAY.pack(last_stream_id, code) + debug)


def u32(payload: bytes, offset: int = 0) -> int:
    value: int = _U32.unpack_from(payload, offset)[0]
    return value


# ----- HPACK: literal header fields without indexing (RFC 7541 6.2.2)


def _hpack_int(value: int, prefix_bits: int, first: int) -> bytes:
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes((first | value,))
    out = bytearray((first | limit,))
    value -= limit
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _hpack_string(data: bytes) -> bytes:
    return _hpack_int(len(data), 7, 0) + data


def literal(name: bytes | int, value: bytes) -> bytes:
    """A header field that leaves the dynamic table alone; ``name``: bytes or a static index."""
    if isinstance(name, int):
        return _hpack_int(name, 4, 0x00) + _hpack_string(value)
    return b"\x00" + _hpack_string(name) + _hpack_string(value)


STATUS_200 = b"\x88"
"""``:status: 200``: entry 8 of the static table, indexed."""
CONTENT_TYPE_INDEX = 31
GRPC_CONTENT_TYPE = b"application/grpc"
RESPONSE_HEADERS = STATUS_200 + literal(CONTENT_TYPE_INDEX, GRPC_CONTENT_TYPE)
TRAILERS_OK = literal(b"grpc-status", b"0")


def _percent_encode(message: str) -> bytes:
    """grpc-message's encoding: printable ASCII but ``%`` as is, the rest %XX of UTF-8."""
    out = bytearray()
    for b in message.encode("utf-8"):
        if 0x20 <= b <= 0x7E and b != 0x25:
            out.append(b)
        else:
            out += b"%%%02X" % b
    return bytes(out)


def status_trailers(code: int, message: str) -> bytes:
    if code == 0 and not message:
        return TRAILERS_OK
    block = literal(b"grpc-status", b"%d" % code)
    if message:
        block += literal(b"grpc-message", _percent_encode(message))
    return block

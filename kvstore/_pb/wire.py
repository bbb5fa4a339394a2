"""Protobuf wire format pieces for messages we encode by hand (shared bytes, envelopes)."""

from __future__ import annotations


def varint(value: int) -> bytes:
    """``value`` (non-negative) as a base-128 varint."""
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)

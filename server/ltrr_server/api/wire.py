"""Protobuf wire-format pieces for the responses written as bytes (``xmr_wire``, ``decision_wire``).

>>> varint(1), varint(300)
(b'\\x01', b'\\xac\\x02')
>>> length_delimited(b"\\x0a", "hé")
b'\\n\\x03h\\xc3\\xa9'
"""

from __future__ import annotations

import struct

pack_double = struct.Struct("<d").pack

# Varints below 128 are one byte: looked up, not computed, on the hot paths.
_SMALL = [bytes([n]) for n in range(128)]


def varint(n: int) -> bytes:
    """``n`` (0 or more) as a protobuf varint."""
    if n < 128:
        return _SMALL[n]
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def length_delimited(tag: bytes, text: str) -> bytes:
    """A string field: its tag, the UTF-8 length, the UTF-8 bytes."""
    encoded = text.encode()
    return tag + varint(len(encoded)) + encoded

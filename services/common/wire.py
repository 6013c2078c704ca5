"""Hand encoding of protobuf wire format for the few places that assemble messages from parts that
are already serialized (forwarding journaled commands, streaming stored events), to avoid parsing and
re-serializing them. Only length-delimited and varint fields; the receivers parse normally."""

from __future__ import annotations

from collections.abc import Iterable

_SMALL = [bytes((i,)) for i in range(128)]


def varint(n: int) -> bytes:
    if n < 128:
        return _SMALL[n]
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def field_bytes(number: int, payload: bytes) -> bytes:
    """A length-delimited field (string, bytes or embedded message)."""
    return varint((number << 3) | 2) + varint(len(payload)) + payload


def field_varint(number: int, value: int) -> bytes:
    """A varint field (non-negative integers, bools, enums)."""
    return varint(number << 3) + varint(value)


def repeated_messages(number: int, payloads: Iterable[bytes]) -> bytes:
    """`repeated Message field = number` from serialized messages."""
    tag = varint((number << 3) | 2)
    parts: list[bytes] = []
    for p in payloads:
        parts.append(tag)
        parts.append(varint(len(p)))
        parts.append(p)
    return b"".join(parts)

"""One event as a broker message: its subject suffix, payload and headers (see services.exporter)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from google.protobuf import json_format

CONTENT_TYPES = {"protobuf": "application/x-protobuf", "json": "application/json"}


@dataclass(frozen=True)
class ExportMessage:
    source: str
    sequence: int
    kind: str  # the event's oneof field ("balance_changed", "trade_executed", ...)
    schema: str  # the protobuf message's full name
    payload: bytes
    content_type: str

    @property
    def message_id(self) -> str:
        return message_id(self.source, self.sequence)

    def headers(self) -> dict[str, str]:
        return {
            "Exchange-Source": self.source,
            "Exchange-Sequence": str(self.sequence),
            "Exchange-Kind": self.kind,
            "Exchange-Schema": self.schema,
            "Content-Type": self.content_type,
        }


def message_id(source: str, sequence: int) -> str:
    return f"{source}:{sequence}"


def check_format(fmt: str) -> str:
    if fmt not in CONTENT_TYPES:
        raise ValueError(f'[exporter] format must be "protobuf" or "json", not {fmt!r}')
    return fmt


def to_message(event: Any, fmt: str = "protobuf") -> ExportMessage:
    """An AccountEvent or MatchingEvent as a message (its own source and sequence)."""
    if fmt == "json":
        payload = json_format.MessageToJson(event, indent=None, preserving_proto_field_name=True).encode()
    else:
        payload = event.SerializeToString()
    return ExportMessage(
        source=str(event.source),
        sequence=int(event.sequence),
        kind=event.WhichOneof("event") or "unknown",
        schema=event.DESCRIPTOR.full_name,
        payload=payload,
        content_type=CONTENT_TYPES[fmt],
    )


def sequence_of(headers: Any) -> int:
    """The Exchange-Sequence of a message's headers (a mapping, or Kafka's (name, bytes) pairs)."""
    if isinstance(headers, dict):
        value: Any = headers.get("Exchange-Sequence", "")
    else:
        value = next((v for k, v in headers or () if k == "Exchange-Sequence"), b"")
    if isinstance(value, bytes):
        value = value.decode()
    if not value:
        raise ValueError("the broker's last message has no Exchange-Sequence header")
    return int(value)

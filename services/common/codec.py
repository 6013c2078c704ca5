"""Journal record codecs of the state machines' protobuf commands (services.common.statemachine.CodecSpec):
a record is the command serialized with its `time_us` stamped in, the command's only clock."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, TypeVar

from services.common.statemachine import CodecSpec


class StampedCommand(Protocol):
    time_us: int

    def SerializeToString(self, *, deterministic: bool = ...) -> bytes: ...


M = TypeVar("M", bound=StampedCommand)


def stamped_codec(parse: Callable[[bytes], M]) -> CodecSpec[M]:
    """The codec of a command message with a `time_us` field: encode stamps the time the host gives
    and serializes; decode parses (`parse`, the message's FromString) and reads the time back."""

    def encode(command: M, time_us: int) -> bytes:
        command.time_us = time_us
        return command.SerializeToString()

    def decode(record: bytes) -> tuple[M, int]:
        command = parse(record)
        return command, command.time_us

    return CodecSpec(encode=encode, decode=decode)

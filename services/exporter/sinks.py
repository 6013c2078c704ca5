"""What a broker sink offers the exporter: the last sequence it holds of a source, and publishing."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from services.exporter.messages import ExportMessage


class SinkRefused(Exception):
    """The broker refused or did not acknowledge a message (or cannot be reached)."""


class Sink(Protocol):
    name: str  # "jetstream", "kafka"

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def last_sequence(self, source: str) -> int:
        """The sequence of the last message of `source` the broker holds (0: none); SinkRefused."""
        ...

    async def publish(self, source: str, messages: Sequence[ExportMessage]) -> None:
        """Publish `messages` (the next ones of `source`, in order) and return once the broker
        acknowledged every one; SinkRefused otherwise (some may be stored: read last_sequence)."""
        ...

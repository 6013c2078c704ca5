"""Where commands enter a matching shard, host side (the gRPC servicer only parses and formats):

- CommandIntake: per source (an accounts shard), the highest sequence queued to the host, so that a
  source that reconnects resumes after what is queued and not only after what is applied; and, per
  source stream, the chain check of what arrives (SourceStream.accept): resends are dropped, and a
  command whose previous_sequence is not the last one received from its source is refused
  (SEQUENCE_GAP) with nothing of its request queued. The machine checks the same chain once more when
  it applies a command (services.matching.machine), against what it applied.
- ExpiryTimer: the shard's own command source, journaling an ExpireOrders command whenever a GTD
  order is due (the engine never reads a clock).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from typing import Any

from exchange.v1 import events_pb2 as ev

from services.common.errors import FailedPrecondition, Reason
from services.matching.machine import timer_source


class CommandIntake:
    def __init__(self, host: Any) -> None:
        self.host = host
        self._queued: dict[str, int] = {}  # highest source sequence queued to the host, per source

    def open(self, source: str) -> SourceStream:
        """A stream of `source`'s commands, resuming after the last one applied or queued."""
        applied = self.host.machine.engine.source_seqs.get(source, 0)
        return SourceStream(self, source, max(applied, self._queued.get(source, 0)))


class SourceStream:
    """One connection of a source: the sequence it resumes after (`start`), then what it sends."""

    def __init__(self, intake: CommandIntake, source: str, start: int) -> None:
        self.intake = intake
        self.source = source
        self.start = start
        self.last = start  # the last command received (and queued) from the source

    def accept(self, commands: Iterable[ev.MatchingCommand]) -> list[ev.MatchingCommand]:
        """The commands of one request to queue, in order, each stamped with the stream's source:
        resends of what is queued or applied are dropped; a gap (or a command out of order) is
        refused, never skipped: nothing of the request is queued, and the source resends from the
        acknowledged sequence."""
        source = self.source
        last = self.last
        out: list[ev.MatchingCommand] = []
        for c in commands:
            if c.source_sequence <= last:
                continue  # a resend of something already queued or applied
            if c.previous_sequence != last:
                raise FailedPrecondition(
                    f"{source}: command {c.source_sequence} follows {c.previous_sequence}, but the last "
                    f"command received from {source} is {last}",
                    Reason.SEQUENCE_GAP,
                )
            c.source = source
            last = c.source_sequence
            out.append(c)
        if out:
            self.last = last
            queued = self.intake._queued
            queued[source] = max(queued.get(source, 0), last)
        return out


class ExpiryTimer:
    def __init__(self, host: Any, shard: str) -> None:
        self.host = host
        self.source = timer_source(shard)
        self._seq = 0  # the last sequence this timer numbered

    def tick(self, now_us: int) -> bool:
        """Queue an expiry command when some GTD order is due at `now_us`; True when it did."""
        engine = self.host.machine.engine
        if not engine.expiry_due(now_us):
            return False
        self._seq = max(self._seq, engine.source_seqs.get(self.source, 0)) + 1
        cmd = ev.MatchingCommand(source=self.source, source_sequence=self._seq)
        cmd.expire_orders.SetInParent()
        self.host.enqueue_internal(cmd)
        return True

    async def run(self, interval_s: float) -> None:
        """Check every `interval_s` seconds (the wall clock lives here, outside the machine)."""
        while True:
            await asyncio.sleep(interval_s)
            self.tick(time.time_ns() // 1000)

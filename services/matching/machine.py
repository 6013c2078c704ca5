"""The matching shard as a host state machine: journaled MatchingCommand protos in, numbered
MatchingEvent records out. Wraps the pure engine; knows protobuf, not gRPC."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from exchange.v1 import events_pb2 as ev

from services.common.codec import stamped_codec
from services.common.errors import FailedPrecondition, Reason
from services.common.markets import MarketSpec
from services.common.snapshot_codec import dumps_plain, loads_plain
from services.common.statemachine import CodecSpec, Outcome
from services.matching.convert import command_from_proto, event_to_proto
from services.matching.engine import MatchingEngine

MACHINE_SNAPSHOT_VERSION = 1


def timer_source(shard: str) -> str:
    """The source name of the shard's own expiry timer (services.matching.intake.ExpiryTimer)."""
    return f"{shard}:timer"


class MatchingMachine:
    def __init__(self, engine: MatchingEngine, applied_seq: int = 0) -> None:
        self.engine = engine
        self._applied_seq = applied_seq
        # The shard's own expiry timer numbers its commands itself; every other source is chained.
        self._timer_source = timer_source(engine.shard)

    @property
    def applied_seq(self) -> int:
        return self._applied_seq

    @property
    def event_seq(self) -> int:
        return self.engine.event_seq

    @property
    def shard(self) -> str:
        return self.engine.shard

    def apply(self, seq: int, time_us: int, command: ev.MatchingCommand) -> Outcome:
        engine = self.engine
        source = command.source
        last = engine.source_seqs.get(source, 0)
        if command.source_sequence <= last:
            return Outcome(result=last, journal=False)  # a resend: already applied
        if command.previous_sequence != last and source != self._timer_source:
            raise FailedPrecondition(
                f"{source}: command {command.source_sequence} follows {command.previous_sequence}, "
                f"but the last applied is {last}",
                Reason.SEQUENCE_GAP,
            )
        cmd = command_from_proto(command)
        first = engine.event_seq + 1
        groups = engine.apply(source, command.source_sequence, time_us, cmd)
        self._applied_seq = seq
        records: list[bytes] = []
        n = first
        shard = engine.shard
        time_used = engine.last_time
        placed = command.place_order if command.HasField("place_order") else None
        for group in groups:
            for e in group.events:
                records.append(
                    event_to_proto(
                        e,
                        source=shard,
                        sequence=n,
                        time_us=time_used,
                        market=group.market,
                        command_source=source,
                        command_sequence=command.source_sequence,
                        placed=placed,
                    ).SerializeToString()
                )
                n += 1
        return Outcome(result=command.source_sequence, events=records)

    def snapshot(self) -> bytes:
        return dumps_plain(
            {
                "version": MACHINE_SNAPSHOT_VERSION,
                "applied_seq": self._applied_seq,
                "engine": self.engine.snapshot(),
            }
        )

    @classmethod
    def restore(cls, shard: str, markets: Mapping[str, MarketSpec], data: bytes | None) -> MatchingMachine:
        if data is None:
            return cls(MatchingEngine(shard, markets.values()))
        state: dict[str, Any] = loads_plain(data)
        if state.get("version") != MACHINE_SNAPSHOT_VERSION:
            raise ValueError("unsupported matching machine snapshot")
        return cls(MatchingEngine.restore(shard, markets, state["engine"]), int(state["applied_seq"]))

    def state_hash(self) -> str:
        return self.engine.state_hash()


CODEC: CodecSpec[ev.MatchingCommand] = stamped_codec(ev.MatchingCommand.FromString)

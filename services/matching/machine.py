"""The matching shard as a host state machine: journaled MatchingCommand protos in, numbered
MatchingEvent records out. Wraps the pure engine; knows protobuf, not gRPC.

Moving a market (services.matching.handover has the protocol): HaltMarketCommand from an accounts
source (in its chain) records that the source sends nothing more for the market; ExportMarketCommand
and ImportMarketCommand come from the shard's own admin source (`admin_source`, numbered by the shard
like the expiry timer). The move state (which sources halted which market, the markets handed over
and their exported books, the markets taken over) is part of the machine's state and snapshot, so a
replay gives the same shard."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from exchange.v1 import events_pb2 as ev
from exchange.v1 import types_pb2

from services.common.codec import stamped_codec
from services.common.errors import FailedPrecondition, NotFound, Reason
from services.common.markets import MarketSpec
from services.common.snapshot_codec import dumps_plain, loads_plain
from services.common.spec_codec import spec_from_message
from services.common.statemachine import CodecSpec, Outcome
from services.matching.book import OrderBook
from services.matching.convert import command_from_proto, event_to_proto
from services.matching.engine import MatchingEngine
from services.matching.handover import book_from_proto, book_to_proto
from services.matching.model import REJECT_MARKET_HALTED, CommandRejected

MACHINE_SNAPSHOT_VERSION = 1


def timer_source(shard: str) -> str:
    """The source name of the shard's own expiry timer (services.matching.intake.ExpiryTimer)."""
    return f"{shard}:timer"


def admin_source(shard: str) -> str:
    """The source name of the operator's commands to the shard (export and import of a market)."""
    return f"{shard}:admin"


_MOVE_COMMANDS = ("halt_market", "export_market", "import_market", "open_market")


@dataclass
class Imported:
    """The result of an ImportMarketCommand."""

    market: str
    order_count: int
    event_sequence: int
    complete: bool = True


class MatchingMachine:
    def __init__(
        self,
        engine: MatchingEngine,
        applied_seq: int = 0,
        catalog: Mapping[str, MarketSpec] | None = None,
    ) -> None:
        self.engine = engine
        self._applied_seq = applied_seq
        # The shard's own expiry timer and admin source number their commands themselves; every
        # other source is chained.
        self._timer_source = timer_source(engine.shard)
        self._admin_source = admin_source(engine.shard)
        # Every market's spec (an imported market need not be configured for this shard; a market
        # opened while running is added to it).
        self.catalog: dict[str, MarketSpec] = dict(catalog) if catalog is not None else {}
        # Markets opened while running: market -> its spec (serialized exchange.v1.MarketSpec).
        self.opened: dict[str, bytes] = {}
        # Moving markets: market -> the sources that halted it; markets handed over -> their exported
        # book (serialized MarketBook); markets taken over -> (from shard, export sequence).
        self.halted: dict[str, set[str]] = {}
        self.moved_out: dict[str, bytes] = {}
        self.imported: dict[str, tuple[str, int]] = {}
        # Books coming in parts: market -> (parts, parts applied, the book so far).
        self.importing: dict[str, tuple[int, int, ev.MarketBook]] = {}

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
        if (
            command.previous_sequence != last
            and source != self._timer_source
            and source != self._admin_source
        ):
            raise FailedPrecondition(
                f"{source}: command {command.source_sequence} follows {command.previous_sequence}, "
                f"but the last applied is {last}",
                Reason.SEQUENCE_GAP,
            )
        kind = command.WhichOneof("command")
        if kind in _MOVE_COMMANDS:
            return self._apply_move(seq, kind, command)
        if self.halted and source in self.halted.get(_market_of(command), ()):
            return self._refuse_halted(seq, time_us, command)
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

    # --- moving a market (services.matching.handover) ------------------------------------------

    def _apply_move(self, seq: int, kind: str, command: ev.MatchingCommand) -> Outcome:
        engine = self.engine
        source = command.source
        result: Any
        if kind == "halt_market":
            h = command.halt_market
            if h.resume:
                halted = self.halted.get(h.market)
                if halted is not None:
                    halted.discard(source)
                    if not halted:
                        del self.halted[h.market]
            elif h.market in engine.books:  # (a market not here has nothing to halt)
                self.halted.setdefault(h.market, set()).add(source)
            result = command.source_sequence
        elif source != self._admin_source:
            raise FailedPrecondition(f"{source} may not move markets", Reason.SOURCE_NOT_ALLOWED)
        elif kind == "open_market":
            result = self._open(command.open_market.spec)
            if result is None:
                return Outcome(result=0, journal=False)
        elif kind == "export_market":
            result = self._export(command.export_market)
            if result is None:  # a repeat: the book exported before
                return Outcome(
                    result=ev.MarketBook.FromString(self.moved_out[command.export_market.market]),
                    journal=False,
                )
        else:
            result, changed = self._import(command.import_market)
            if not changed:
                return Outcome(result=result, journal=False)
        engine.source_seqs[source] = command.source_sequence
        self._applied_seq = seq
        return Outcome(result=result)

    def _refuse_halted(self, seq: int, time_us: int, command: ev.MatchingCommand) -> Outcome:
        """A command of a source for a market it halted (it promised to send none): rejected, with the
        rejection's event (accounts releases what the command held)."""
        engine = self.engine
        kind = command.WhichOneof("command")
        body: Any = getattr(command, kind or "")
        market = str(body.market)
        engine.source_seqs[command.source] = command.source_sequence
        engine.last_time = max(engine.last_time, time_us)
        engine.event_seq += 1
        self._applied_seq = seq
        rejected = CommandRejected(
            int(getattr(body, "order_id", 0)),
            int(body.user_id),
            REJECT_MARKET_HALTED,
            f"market {market} is halted for a move",
        )
        record = event_to_proto(
            rejected,
            source=engine.shard,
            sequence=engine.event_seq,
            time_us=engine.last_time,
            market=market,
            command_source=command.source,
            command_sequence=command.source_sequence,
        )
        return Outcome(result=command.source_sequence, events=[record.SerializeToString()])

    def _assets(self) -> dict[str, Any]:
        assets = {s.base.symbol: s.base for s in self.catalog.values()}
        assets.update({s.quote.symbol: s.quote for s in self.catalog.values()})
        return assets

    def _open(self, m: types_pb2.MarketSpec) -> int | None:
        """A market added while running: its spec into the catalog, an empty book here. None when it
        is open already with this spec."""
        engine = self.engine
        data = m.SerializeToString(deterministic=True)
        if m.symbol in self.catalog:
            if self.opened.get(m.symbol) == data:
                return None
            raise FailedPrecondition(f"market {m.symbol} exists already", Reason.INVALID_FIELD)
        spec = spec_from_message(m, self._assets())
        if spec.shard != engine.shard:
            raise FailedPrecondition(f"market {m.symbol} is for {spec.shard}", Reason.MARKET_NOT_ON_SHARD)
        self.catalog[spec.symbol] = spec
        self.opened[spec.symbol] = data
        engine.books[spec.symbol] = OrderBook(spec)
        return self._applied_seq + 1

    def _export(self, c: ev.ExportMarketCommand) -> ev.MarketBook | None:
        engine = self.engine
        market = c.market
        if market in self.moved_out:
            done = ev.MarketBook.FromString(self.moved_out[market])
            if done.to_shard != c.to_shard:
                raise FailedPrecondition(
                    f"{market} was handed over to {done.to_shard}, not to {c.to_shard}", Reason.MARKET_MOVING
                )
            return None
        book = engine.books.get(market)
        if book is None:
            raise NotFound(f"market {market} is not owned by {engine.shard}", Reason.MARKET_NOT_ON_SHARD)
        if not c.to_shard or c.to_shard == engine.shard:
            raise FailedPrecondition("a market is handed over to another shard", Reason.INVALID_FIELD)
        if not c.sources:
            raise FailedPrecondition("the export names no source", Reason.INVALID_FIELD)
        missing = sorted(set(c.sources) - self.halted.get(market, set()))
        if missing:
            raise FailedPrecondition(
                f"{market} is not halted by {', '.join(missing)} yet",
                Reason.MARKET_MOVING,
                {"market": market},
            )
        exported = book_to_proto(
            book, from_shard=engine.shard, to_shard=c.to_shard, export_sequence=engine.event_seq
        )
        if market in self.opened:
            exported.spec.ParseFromString(self.opened[market])
        del engine.books[market]
        self.halted.pop(market, None)
        self.imported.pop(market, None)
        self.moved_out[market] = exported.SerializeToString()
        return exported

    def _import(self, c: ev.ImportMarketCommand) -> tuple[Imported, bool]:
        """(the result, whether the state changed: not for a repeat)."""
        engine = self.engine
        m = c.book
        market = m.market
        if market in engine.books:
            if self.imported.get(market) == (m.from_shard, m.export_sequence):  # a repeat
                return Imported(market, len(engine.books[market]), engine.event_seq), False
            raise FailedPrecondition(f"{engine.shard} already holds {market}", Reason.MARKET_NOT_ON_SHARD)
        if m.to_shard != engine.shard:
            raise FailedPrecondition(f"the book of {market} is for {m.to_shard}", Reason.INVALID_FIELD)
        parts = max(1, c.parts)
        if parts > 1:
            pending = self.importing.get(market)
            if pending is not None:
                n, applied, so_far = pending
                same = (so_far.from_shard, so_far.export_sequence, so_far.state_hash, n) == (
                    m.from_shard,
                    m.export_sequence,
                    m.state_hash,
                    parts,
                )
                if same and c.part < applied:  # a repeat of a part that is in
                    return Imported(
                        market, len(so_far.bids) + len(so_far.asks), engine.event_seq, False
                    ), False
            whole = self._import_part(c, parts)
            if whole is None:
                _, _, so_far = self.importing[market]
                return Imported(market, len(so_far.bids) + len(so_far.asks), engine.event_seq, False), True
            m = whole
        spec = self.catalog.get(market)
        opened = b""
        if m.HasField("spec"):  # a market added while running: its spec travels with the book
            carried = spec_from_message(m.spec, self._assets())
            if carried.symbol != market or (spec is not None and replace(carried, shard=spec.shard) != spec):
                raise FailedPrecondition(
                    f"the book's spec of {market} is not the market's", Reason.INVALID_FIELD
                )
            spec = carried
            opened = m.spec.SerializeToString(deterministic=True)
        if spec is None:
            raise NotFound(f"unknown market {market}", Reason.UNKNOWN_MARKET)
        engine.books[market] = book_from_proto(spec, m)
        if opened:
            self.catalog[market] = spec
            self.opened[market] = opened
        self.importing.pop(market, None)
        self.moved_out.pop(market, None)
        self.imported[market] = (m.from_shard, m.export_sequence)
        return Imported(market, len(m.bids) + len(m.asks), engine.event_seq), True

    def _import_part(self, c: ev.ImportMarketCommand, parts: int) -> ev.MarketBook | None:
        """Take part `c.part` of a book in parts (in order; the caller answers a repeat, a gap is
        refused, a part 0 of another handover of the market starts over). The whole book once the
        last part is in, else None."""
        m = c.book
        market = m.market
        header = (m.from_shard, m.export_sequence, m.state_hash, parts)
        pending = self.importing.get(market)
        if pending is not None:
            n, applied, so_far = pending
            if (so_far.from_shard, so_far.export_sequence, so_far.state_hash, n) != header:
                if c.part != 0:
                    raise FailedPrecondition(
                        f"part {c.part} is of another book of {market}", Reason.INVALID_FIELD
                    )
                pending = None  # a new handover of the market starts over
        if pending is None:
            if c.part != 0:
                raise FailedPrecondition(f"part {c.part} of {market} before part 0", Reason.SEQUENCE_GAP)
            so_far = ev.MarketBook()
            so_far.CopyFrom(m)
            del so_far.bids[:]
            del so_far.asks[:]
            applied = 0
        elif c.part < applied:
            raise FailedPrecondition(f"part {c.part} of {market} is in already", Reason.SEQUENCE_GAP)
        elif c.part > applied:
            raise FailedPrecondition(f"part {c.part} of {market} before part {applied}", Reason.SEQUENCE_GAP)
        so_far.bids.extend(m.bids)
        so_far.asks.extend(m.asks)
        applied += 1
        if applied < parts:
            self.importing[market] = (parts, applied, so_far)
            return None
        return so_far

    # --- snapshot ------------------------------------------------------------------------------

    def snapshot(self) -> bytes:
        return dumps_plain(
            {
                "version": MACHINE_SNAPSHOT_VERSION,
                "applied_seq": self._applied_seq,
                "engine": self.engine.snapshot(),
                "halted": {m: sorted(s) for m, s in sorted(self.halted.items())},
                "moved_out": dict(sorted(self.moved_out.items())),
                "imported": {m: list(v) for m, v in sorted(self.imported.items())},
                "opened": dict(sorted(self.opened.items())),
                "importing": {
                    m: [n, k, b.SerializeToString(deterministic=True)]
                    for m, (n, k, b) in sorted(self.importing.items())
                },
            }
        )

    @classmethod
    def restore(
        cls,
        shard: str,
        markets: Mapping[str, MarketSpec],
        data: bytes | None,
        catalog: Mapping[str, MarketSpec] | None = None,
    ) -> MatchingMachine:
        """From a snapshot (None: empty). `markets`: the shard's configured markets; `catalog`: every
        market's spec (for the markets it took over; default `markets`)."""
        every = dict(catalog if catalog is not None else markets)
        if data is None:
            return cls(MatchingEngine(shard, markets.values()), catalog=every)
        state: dict[str, Any] = loads_plain(data)
        if state.get("version") != MACHINE_SNAPSHOT_VERSION:
            raise ValueError("unsupported matching machine snapshot")
        moved_out = {str(k): bytes(v) for k, v in state.get("moved_out", {}).items()}
        imported = {str(k): (str(v[0]), int(v[1])) for k, v in state.get("imported", {}).items()}
        opened = {str(k): bytes(v) for k, v in state.get("opened", {}).items()}
        assets = {s.base.symbol: s.base for s in every.values()}
        assets.update({s.quote.symbol: s.quote for s in every.values()})
        for symbol, raw in opened.items():  # markets opened while running: their journaled spec
            spec = spec_from_message(types_pb2.MarketSpec.FromString(raw), assets)
            every[symbol] = spec
        # The books it holds: its configured markets and those opened here, but those handed over;
        # and those taken over.
        owned = {s: spec for s, spec in markets.items() if s not in moved_out}
        for symbol in opened:
            if symbol not in moved_out and every[symbol].shard == shard:
                owned[symbol] = every[symbol]
        for symbol in imported:
            taken = every.get(symbol)
            if taken is None:
                raise ValueError(f"snapshot holds market {symbol}, which is not configured")
            owned[symbol] = taken
        machine = cls(
            MatchingEngine.restore(shard, owned, state["engine"]), int(state["applied_seq"]), catalog=every
        )
        machine.halted = {str(k): set(v) for k, v in state.get("halted", {}).items()}
        machine.moved_out = moved_out
        machine.imported = imported
        machine.opened = opened
        machine.importing = {
            str(k): (int(v[0]), int(v[1]), ev.MarketBook.FromString(bytes(v[2])))
            for k, v in state.get("importing", {}).items()
        }
        return machine

    def state_hash(self) -> str:
        if not (self.halted or self.moved_out or self.imported or self.opened or self.importing):
            return self.engine.state_hash()
        moves = repr(
            (
                sorted((m, sorted(s)) for m, s in self.halted.items()),
                sorted(self.moved_out.items()),
                sorted(self.imported.items()),
                sorted(self.opened.items()),
                sorted(
                    (m, n, k, b.SerializeToString(deterministic=True))
                    for m, (n, k, b) in self.importing.items()
                ),
            )
        )
        return hashlib.sha256(f"{self.engine.state_hash()}|{moves}".encode()).hexdigest()


def _market_of(command: ev.MatchingCommand) -> str:
    kind = command.WhichOneof("command")
    return str(getattr(command, kind).market) if kind and kind != "expire_orders" else ""


CODEC: CodecSpec[ev.MatchingCommand] = stamped_codec(ev.MatchingCommand.FromString)

"""The market-data state machine: matching events in, K-lines, tickers, recent trades and L2 depth out.

Deterministic: no clock, no I/O. The state after a sequence of events depends only on those events, and
it includes the checkpoint (last applied event sequence) of every shard, so the service restarts from
the latest snapshot and replays each shard's stream from checkpoint + 1; a replayed event (sequence not
above the checkpoint) is ignored, so nothing is counted twice.

An event the state cannot apply raises BadEvent and changes nothing: a gap in the sequences (GapError,
raised before anything of the batch is applied), an event of another source than the shard's stream, a
trade without a positive price and amount (checked before the event changes anything). The events of
the batch before it stay applied (the checkpoint is the last of them; BadEvent.changes says what they
changed), so the consumer resumes exactly at the event that failed.

Per market:
- an L3 mirror of the book (services.market.depth), giving L2 depth equal to the shard's after each
  whole command;
- K-lines for every interval (services.market.klines), keyed by the trade's event time. Event times of
  one market never run backwards in matching; should they (a market handed to another shard with a
  slower clock), a trade's time is clamped to the market's latest trade time, so K-lines stay ordered;
- the last 1000 trades (numbered per market, for the trade subscriptions), the last price.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from exchange.v1 import events_pb2 as ev

from services.common.enums import LIMIT
from services.common.errors import quote
from services.common.markets import MarketSpec
from services.common.snapshot_codec import dumps_plain, loads_plain
from services.market.depth import DepthMirror
from services.market.klines import INTERVALS, M1, KlineSeries

SNAPSHOT_VERSION: Final = 1
RECENT_TRADES: Final = 1000

# (number within the market, trade id, price ticks, lots, quote units, taker side, time us)
RecentTrade = tuple[int, int, int, int, int, int, int]


class BadEvent(ValueError):
    """Event `sequence` cannot be applied; it changed nothing. `changes` holds what the events of its
    batch before it changed (they are applied)."""

    def __init__(self, message: str, sequence: int, changes: Changes | None = None) -> None:
        super().__init__(message)
        self.sequence = sequence
        self.changes = changes if changes is not None else Changes()


class GapError(BadEvent):
    """An event stream skipped a sequence: the events cannot be applied (`sequence` is the one
    expected; nothing of the batch was applied)."""


@dataclass(slots=True)
class Changes:
    """What one batch of events changed: markets whose book changed, markets that traded."""

    book: set[str] = field(default_factory=set)
    trades: set[str] = field(default_factory=set)
    events: int = 0

    def __bool__(self) -> bool:
        return bool(self.book or self.trades)


class MarketData:
    __slots__ = ("depth", "klines", "last_price", "last_time", "recent", "source", "spec", "trade_seq")

    def __init__(self, spec: MarketSpec) -> None:
        self.spec = spec
        self.source = spec.shard  # the shard whose events last touched this market
        self.depth = DepthMirror()
        self.klines: dict[int, KlineSeries] = {i: KlineSeries(i) for i in INTERVALS}
        self.recent: deque[RecentTrade] = deque(maxlen=RECENT_TRADES)
        self.trade_seq = 0  # trades applied so far
        self.last_price = 0  # ticks; 0 before the first trade
        self.last_time = 0  # time of the latest trade (us)

    @property
    def minutes(self) -> KlineSeries:
        return self.klines[M1]

    def trades_after(self, n: int) -> list[RecentTrade] | None:
        """Trades numbered above n, oldest first; None when some of them are no longer kept."""
        recent = self.recent
        if not recent or n >= recent[-1][0]:
            return []
        if n < recent[0][0] - 1:
            return None
        start = n - recent[0][0] + 1
        return [recent[i] for i in range(start, len(recent))]

    def snapshot(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "orders": self.depth.snapshot(),
            "klines": {i: s.snapshot() for i, s in self.klines.items()},
            "recent": list(self.recent),
            "trade_seq": self.trade_seq,
            "last_price": self.last_price,
            "last_time": self.last_time,
        }

    @classmethod
    def restore(cls, spec: MarketSpec, data: Mapping[str, Any]) -> MarketData:
        md = cls(spec)
        md.source = str(data["source"])
        md.depth = DepthMirror.restore(data["orders"])
        for i, s in data["klines"].items():
            if int(i) in md.klines:
                md.klines[int(i)] = KlineSeries.restore(s)
        md.recent.extend(tuple(int(x) for x in t) for t in data["recent"])  # type: ignore[misc]
        md.trade_seq = int(data["trade_seq"])
        md.last_price = int(data["last_price"])
        md.last_time = int(data["last_time"])
        return md


class MarketDataState:
    def __init__(self, markets: Iterable[MarketSpec]) -> None:
        self.markets: dict[str, MarketData] = {m.symbol: MarketData(m) for m in markets}
        self.checkpoints: dict[str, int] = {}
        self.event_times: dict[str, int] = {}  # time of the last event applied per shard

    def add_market(self, spec: MarketSpec) -> bool:
        """Take in a market added while running (its book starts empty: its events are still to be
        read, from whichever shard trades it). False when it is known already."""
        if spec.symbol in self.markets:
            return False
        self.markets[spec.symbol] = MarketData(spec)
        return True

    def checkpoint(self, shard: str) -> int:
        return self.checkpoints.get(shard, 0)

    @property
    def applied(self) -> int:
        """Events applied over every shard (the snapshot key)."""
        return sum(self.checkpoints.values())

    # --- applying events -----------------------------------------------------------------------

    def apply_batch(self, shard: str, events: Sequence[ev.MatchingEvent]) -> Changes:
        """Apply a batch of one shard's events (in order). Events at or below the shard's checkpoint
        are ignored; a gap raises GapError before anything is applied."""
        changes = Changes()
        cp = self.checkpoints.get(shard, 0)
        expect = cp
        for e in events:
            if e.sequence <= expect:
                continue
            if e.sequence != expect + 1:
                raise GapError(f"{shard}: event {e.sequence} follows {expect}", expect + 1)
            expect = e.sequence
        if expect == cp:
            return changes
        checkpoints = self.checkpoints
        last_time = 0
        try:
            for e in events:
                if e.sequence > cp:
                    if e.source and e.source != shard:
                        raise BadEvent(
                            f"event {e.sequence} of the stream of {shard} comes from {quote(e.source)}",
                            e.sequence,
                        )
                    self._apply(e, changes)
                    changes.events += 1
                    cp = e.sequence
                    checkpoints[shard] = cp
                    last_time = e.time_us
        except BaseException as exc:  # a bad event, or a bug: what was applied stays, and is told
            if changes.events:
                self.event_times[shard] = last_time
            if isinstance(exc, BadEvent):
                exc.changes = changes
            raise
        self.event_times[shard] = last_time
        return changes

    def apply(self, shard: str, event: ev.MatchingEvent) -> Changes:
        return self.apply_batch(shard, [event])

    def _apply(self, e: ev.MatchingEvent, changes: Changes) -> None:
        md = self.markets.get(e.market)
        if md is None:
            return  # a market not configured here (or a shard-wide rejection)
        kind = e.WhichOneof("event")
        depth = md.depth
        if kind == "trade_executed":
            t = e.trade_executed
            if t.price_ticks <= 0 or t.amount_lots <= 0 or t.quote_units < 0:
                spec = md.spec
                raise BadEvent(
                    f"event {e.sequence}: trade {t.trade_id} on {e.market} at price "
                    f"{spec.format_price(t.price_ticks)} {spec.quote.symbol}, amount "
                    f"{spec.format_amount(t.amount_lots)} {spec.base.symbol}, quote amount "
                    f"{spec.format_quote(t.quote_units)} {spec.quote.symbol}: price and amount must be "
                    "positive",
                    e.sequence,
                )
            depth.set_remaining(t.maker_order_id, t.maker_remaining_lots)
            if t.taker_order_id in depth:
                depth.set_remaining(t.taker_order_id, t.taker_remaining_lots)
            time_us = e.time_us if e.time_us > md.last_time else md.last_time
            price = t.price_ticks
            lots = t.amount_lots
            quote = t.quote_units
            for series in md.klines.values():
                series.add(time_us, price, lots, quote)
            md.trade_seq += 1
            md.recent.append((md.trade_seq, t.trade_id, price, lots, quote, t.taker_side, time_us))
            md.last_price = price
            md.last_time = time_us
            changes.trades.add(e.market)
        elif kind == "order_done":
            depth.remove(e.order_done.order_id)
        elif kind == "order_accepted":
            o = e.order_accepted.order
            # A duplicate order id is rejected by matching (CommandRejected follows): nothing rests.
            if o.type == LIMIT and o.order_id not in depth:
                depth.add(o.order_id, o.side, o.price_ticks, o.amount_lots)
        elif kind == "order_amended":
            a = e.order_amended
            if a.priority_kept:
                depth.set_remaining(a.order_id, a.remaining_lots)
            else:
                depth.move(a.order_id, a.price_ticks, a.remaining_lots)
        else:
            return  # command_rejected: no book change
        md.source = e.source or md.source
        changes.book.add(e.market)

    # --- snapshot ------------------------------------------------------------------------------

    def snapshot(self) -> bytes:
        return dumps_plain(
            {
                "version": SNAPSHOT_VERSION,
                "checkpoints": dict(sorted(self.checkpoints.items())),
                "event_times": dict(sorted(self.event_times.items())),
                "markets": {s: self.markets[s].snapshot() for s in sorted(self.markets)},
            }
        )

    @classmethod
    def restore(cls, data: bytes, markets: Iterable[MarketSpec]) -> MarketDataState:
        """Restore from snapshot bytes. Markets configured since get an empty state; markets no longer
        configured are dropped."""
        raw: dict[str, Any] = loads_plain(data)
        if raw.get("version") != SNAPSHOT_VERSION:
            raise ValueError(f"unsupported market-data snapshot version {raw.get('version')!r}")
        specs = list(markets)
        state = cls(specs)
        state.checkpoints = {str(k): int(v) for k, v in raw["checkpoints"].items()}
        state.event_times = {str(k): int(v) for k, v in raw["event_times"].items()}
        for spec in specs:
            saved = raw["markets"].get(spec.symbol)
            if saved is not None:
                state.markets[spec.symbol] = MarketData.restore(spec, saved)
        return state

"""MarketService: the gRPC adapter over MarketDataState (validation, decimal formatting, fan-out).

Subscriptions first send the current value, then each change. Ingestion never waits for a subscriber:
after each applied batch the Hub only sets a per-subscriber wake flag; each subscription's own task then
reads the latest state and sends it. So a slow subscriber sees changes coalesced (the latest depth,
ticker or K-line values; every K-line that changed), except for trades, which are sent in full from the
last 1000 kept per market: a subscriber that falls further behind is dropped with RESOURCE_EXHAUSTED
(reason SLOW_CONSUMER). So a subscriber that stops reading costs one blocked task and a bounded amount
of memory, never a growing queue. The Hub holds at most `max_subscriptions` subscriptions in all;
past that a new one is refused with UNAVAILABLE (reason BUSY, retry after a second).

Every request field is checked before anything is computed, with services.common.limits: market at
most MAX_SYMBOL characters and configured (NotFound UNKNOWN_MARKET), interval one of KlineInterval
(INVALID_FIELD), times 0..INT64_MAX with start before end (VALUE_OUT_OF_RANGE), merge at most
MAX_DECIMAL characters and a positive multiple of the tick (INVALID_DECIMAL, PRICE_NOT_ON_TICK), limit 0
(the default) up to MAX_KLINES, MAX_RECENT_TRADES or MAX_DEPTH_LEVELS (beyond: VALUE_OUT_OF_RANGE).
Messages quote input through errors.quote() only.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

from exchange.v1 import market_service_pb2 as pb
from exchange.v1 import types_pb2
from prometheus_client import Counter, Gauge

from services.common import limits
from services.common.depth import Level, depth_levels, parse_merge
from services.common.errors import ExchangeError, InvalidArgument, NotFound, Reason, Unavailable, quote
from services.common.markets import MarketSpec
from services.common.rpc import handles_errors, handles_stream_errors
from services.market.klines import LENGTH_US, Bar
from services.market.state import RECENT_TRADES, Changes, MarketData, MarketDataState, RecentTrade
from services.market.ticker import change_ratio, rolling_24h

SUBSCRIBERS = Gauge("exchange_market_subscribers", "Open market-data subscriptions", ["kind"])
DROPPED = Counter(
    "exchange_market_subscribers_dropped_total", "Subscriptions dropped for falling behind", ["kind"]
)

V = TypeVar("V")

# Subscriptions open at once, over every market and kind (each costs a task and its buffers).
MAX_SUBSCRIPTIONS = 10_000
# Trades a new trade subscription starts with.
INITIAL_TRADES = 100


class ResourceExhausted(ExchangeError):
    code = "RESOURCE_EXHAUSTED"
    default_reason = Reason.SLOW_CONSUMER


def now_us() -> int:
    return time.time_ns() // 1000


# --- fan-out ------------------------------------------------------------------------------------


class Subscription:
    __slots__ = ("book", "closed", "hub", "kind", "market", "trades", "wake")

    def __init__(self, hub: Hub, market: str, kind: str, *, book: bool, trades: bool) -> None:
        self.hub = hub
        self.market = market
        self.kind = kind
        self.book = book
        self.trades = trades
        self.wake = asyncio.Event()
        self.closed = False

    async def next(self) -> bool:
        """Wait for a change; False when the hub is closing."""
        await self.wake.wait()
        self.wake.clear()
        return not self.closed

    def close(self) -> None:
        self.hub.unsubscribe(self)

    async def views(self, view: Callable[[], V], same: Callable[[V, V], bool]) -> AsyncIterator[V]:
        """`view()` now, then again after every change that alters it (`same` says it did not), until
        the hub closes."""
        last: V | None = None
        while True:
            current = view()
            if last is None or not same(last, current):
                yield current
                last = current
            if not await self.next():
                return


class Hub:
    """Per-market subscriber sets; `publish` wakes the subscribers a batch of changes concerns."""

    def __init__(self, max_subscriptions: int = MAX_SUBSCRIPTIONS) -> None:
        self._subs: dict[str, set[Subscription]] = defaultdict(set)
        self.closed = False
        self.max_subscriptions = max_subscriptions
        self._count = 0

    def subscribe(self, market: str, kind: str, *, book: bool, trades: bool) -> Subscription:
        """A new subscription (to a market the caller has checked exists); UNAVAILABLE (BUSY) when
        max_subscriptions are open."""
        if self._count >= self.max_subscriptions:
            raise Unavailable(
                f"too many market-data subscriptions open (at most {self.max_subscriptions}); retry later",
                retry_after_ms=1000,
                reason=Reason.BUSY,
            )
        sub = Subscription(self, market, kind, book=book, trades=trades)
        if self.closed:
            sub.closed = True
            sub.wake.set()
        self._subs[market].add(sub)
        self._count += 1
        SUBSCRIBERS.labels(kind).inc()
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        subs = self._subs.get(sub.market)
        if subs is not None and sub in subs:
            subs.discard(sub)
            self._count -= 1
            SUBSCRIBERS.labels(sub.kind).dec()

    def count(self, market: str | None = None) -> int:
        if market is not None:
            return len(self._subs.get(market, ()))
        return self._count

    def publish(self, changes: Changes) -> None:
        for market in changes.book:
            for sub in self._subs.get(market, ()):
                if sub.book:
                    sub.wake.set()
        for market in changes.trades:
            for sub in self._subs.get(market, ()):
                if sub.trades:
                    sub.wake.set()

    def close(self) -> None:
        """Shutdown: every subscription ends (its stream finishes normally)."""
        self.closed = True
        for subs in self._subs.values():
            for sub in subs:
                sub.closed = True
                sub.wake.set()


# --- formatting ---------------------------------------------------------------------------------


def kline_pb(spec: MarketSpec, interval: int, b: Bar) -> pb.Kline:
    return pb.Kline(
        market=spec.symbol,
        interval=interval,  # type: ignore[arg-type]
        open_time_us=b.open_time,
        open=spec.format_price(b.open),
        high=spec.format_price(b.high),
        low=spec.format_price(b.low),
        close=spec.format_price(b.close),
        volume=spec.format_amount(b.volume),
        quote_volume=spec.format_quote(b.quote),
        trade_count=b.count,
    )


def trade_pb(spec: MarketSpec, t: RecentTrade) -> types_pb2.PublicTrade:
    _, trade_id, price, lots, quote, taker_side, time_us = t
    return types_pb2.PublicTrade(
        trade_id=trade_id,
        market=spec.symbol,
        price=spec.format_price(price),
        amount=spec.format_amount(lots),
        quote_amount=spec.format_quote(quote),
        taker_side=taker_side,  # type: ignore[arg-type]
        time_us=time_us,
    )


def ticker_pb(md: MarketData, now: int) -> pb.Ticker:
    """The rolling 24h ticker at `now`. Without trades in the window: open/high/low/change_ratio are
    empty and the volumes zero; last_price is the latest trade ever (empty before the first)."""
    spec = md.spec
    now = max(now, md.last_time)
    t = pb.Ticker(market=spec.symbol, time_us=now, volume="0", quote_volume="0")
    if md.trade_seq:
        t.last_price = spec.format_price(md.last_price)
    stats = rolling_24h(md.minutes, now)
    if stats is not None:
        t.open = spec.format_price(stats.open)
        t.high = spec.format_price(stats.high)
        t.low = spec.format_price(stats.low)
        t.volume = spec.format_amount(stats.volume)
        t.quote_volume = spec.format_quote(stats.quote)
        t.trade_count = stats.count
        t.change_ratio = change_ratio(md.last_price, stats.open)
    bid = md.depth.best_bid()
    ask = md.depth.best_ask()
    if bid is not None:
        t.best_bid = spec.format_price(bid)
    if ask is not None:
        t.best_ask = spec.format_price(ask)
    return t


def check_limit(limit: int, default: int, maximum: int) -> int:
    """A market-data `limit`: 0 is `default`; above `maximum` it is refused."""
    if limit > maximum:
        raise InvalidArgument(f"limit must be at most {maximum} (0 = {default})", Reason.VALUE_OUT_OF_RANGE)
    return limit or default


def check_time_range(start: int, end: int) -> None:
    limits.check_time(start, "start_time_us")
    limits.check_time(end, "end_time_us")
    if end and start >= end:
        raise InvalidArgument(
            f"inverted time range: start_time_us {start} must be before end_time_us {end}",
            Reason.VALUE_OUT_OF_RANGE,
        )


# --- the servicer -------------------------------------------------------------------------------


class MarketServicer:
    def __init__(
        self, state: MarketDataState, hub: Hub | None = None, *, clock: Callable[[], int] = now_us
    ) -> None:
        self.state = state
        self.hub = hub or Hub()
        self.clock = clock

    def on_changes(self, changes: Changes) -> None:
        """Called by the consumers after each applied batch."""
        if changes:
            self.hub.publish(changes)

    # --- validation ----------------------------------------------------------------------------

    def _market(self, market: str) -> MarketData:
        if not market:
            raise InvalidArgument("market is required", Reason.INVALID_FIELD)
        limits.check_str(market, "market", limits.MAX_SYMBOL)
        md = self.state.markets.get(market)
        if md is None:
            raise NotFound(f"unknown market {quote(market)}", Reason.UNKNOWN_MARKET)
        return md

    @staticmethod
    def _interval(interval: int) -> int:
        if interval not in LENGTH_US:
            valid = ", ".join(pb.KlineInterval.Name(i) for i in LENGTH_US)
            raise InvalidArgument(
                f"interval {interval} is not supported; use one of {valid}", Reason.INVALID_FIELD
            )
        return interval

    @staticmethod
    def _depth_args(spec: MarketSpec, limit: int, merge: str) -> tuple[int, int]:
        limit = check_limit(limit, limits.DEFAULT_DEPTH_LEVELS, limits.MAX_DEPTH_LEVELS)
        return limit, parse_merge(spec, merge)

    def _subscribe(self, context: Any, market: str, kind: str, *, book: bool, trades: bool) -> Subscription:
        sub = self.hub.subscribe(market, kind, book=book, trades=trades)
        add_done = getattr(context, "add_done_callback", None)
        if add_done is not None:
            add_done(lambda _: sub.close())
        return sub

    def _depth_view(self, md: MarketData, limit: int, merge: int) -> tuple[list[Level], list[Level], int]:
        bids, asks = md.depth.depth(limit, merge)
        return bids, asks, self.state.checkpoint(md.source)

    # --- unary ---------------------------------------------------------------------------------

    @handles_errors
    async def GetKlines(self, request: pb.GetKlinesRequest, context: Any) -> pb.GetKlinesResponse:
        md = self._market(request.market)
        interval = self._interval(request.interval)
        start, end = request.start_time_us, request.end_time_us
        check_time_range(start, end)
        limit = check_limit(request.limit, limits.DEFAULT_KLINES, limits.MAX_KLINES)
        bars = md.klines[interval].query(start, end, limit, self.clock())
        return pb.GetKlinesResponse(klines=[kline_pb(md.spec, interval, b) for b in bars])

    @handles_errors
    async def GetTicker(self, request: pb.GetTickerRequest, context: Any) -> pb.GetTickerResponse:
        md = self._market(request.market)
        return pb.GetTickerResponse(ticker=ticker_pb(md, self.clock()))

    @handles_errors
    async def ListTickers(self, request: pb.ListTickersRequest, context: Any) -> pb.ListTickersResponse:
        now = self.clock()
        markets = self.state.markets
        return pb.ListTickersResponse(tickers=[ticker_pb(markets[s], now) for s in sorted(markets)])

    @handles_errors
    async def ListRecentTrades(
        self, request: pb.ListRecentTradesRequest, context: Any
    ) -> pb.ListRecentTradesResponse:
        """The most recent trades, newest first."""
        md = self._market(request.market)
        limit = check_limit(request.limit, limits.DEFAULT_RECENT_TRADES, limits.MAX_RECENT_TRADES)
        recent = md.recent
        n = min(limit, len(recent))
        return pb.ListRecentTradesResponse(trades=[trade_pb(md.spec, recent[-1 - i]) for i in range(n)])

    @handles_errors
    async def GetMarketDepth(
        self, request: pb.GetMarketDepthRequest, context: Any
    ) -> pb.GetMarketDepthResponse:
        md = self._market(request.market)
        limit, merge = self._depth_args(md.spec, request.limit, request.merge)
        bids, asks, seq = self._depth_view(md, limit, merge)
        return pb.GetMarketDepthResponse(
            market=md.spec.symbol,
            bids=depth_levels(md.spec, bids),
            asks=depth_levels(md.spec, asks),
            sequence=seq,
        )

    @handles_errors
    async def GetMarketDataStatus(
        self, request: pb.GetMarketDataStatusRequest, context: Any
    ) -> pb.GetMarketDataStatusResponse:
        return pb.GetMarketDataStatusResponse(checkpoints=dict(self.state.checkpoints))

    # --- subscriptions -------------------------------------------------------------------------

    @handles_stream_errors
    async def SubscribeKlines(
        self, request: pb.SubscribeKlinesRequest, context: Any
    ) -> AsyncIterator[pb.SubscribeKlinesResponse]:
        """The current K-line (the interval containing now; an interval without trades carries the
        close), then every K-line that changes, oldest first. Nothing is sent before the first trade.
        A trade stamped just before `now`'s interval still updates its own (earlier) K-line."""
        md = self._market(request.market)
        interval = self._interval(request.interval)
        series = md.klines[interval]
        spec = md.spec
        sub = self._subscribe(context, spec.symbol, "klines", book=False, trades=True)
        try:
            sent: dict[int, tuple[int, ...]] = {}  # open time -> values last sent, from the cursor on
            current = series.query(0, 0, 1, self.clock())
            if current:
                yield pb.SubscribeKlinesResponse(kline=kline_pb(spec, interval, current[0]))
                sent[current[0].open_time] = current[0].values()
            last = series.last
            cursor = last.open_time if last is not None else -(1 << 63)
            while await sub.next():
                changed = [b.values() for b in series.since(cursor)]
                for values in changed:
                    if sent.get(values[0]) == values:
                        continue
                    yield pb.SubscribeKlinesResponse(kline=kline_pb(spec, interval, Bar.from_values(values)))
                    sent[values[0]] = values
                if changed:
                    cursor = changed[-1][0]
                    for t in [t for t in sent if t < cursor]:
                        del sent[t]
        finally:
            sub.close()

    @handles_stream_errors
    async def SubscribeTicker(
        self, request: pb.SubscribeTickerRequest, context: Any
    ) -> AsyncIterator[pb.SubscribeTickerResponse]:
        md = self._market(request.market)
        sub = self._subscribe(context, md.spec.symbol, "ticker", book=True, trades=True)
        try:
            async for ticker in sub.views(lambda: ticker_pb(md, self.clock()), _same_ticker):
                yield pb.SubscribeTickerResponse(ticker=ticker)
        finally:
            sub.close()

    @handles_stream_errors
    async def SubscribeDepth(
        self, request: pb.SubscribeDepthRequest, context: Any
    ) -> AsyncIterator[pb.SubscribeDepthResponse]:
        md = self._market(request.market)
        spec = md.spec
        limit, merge = self._depth_args(spec, request.limit, request.merge)
        sub = self._subscribe(context, spec.symbol, "depth", book=True, trades=False)
        try:
            async for bids, asks, seq in sub.views(
                lambda: self._depth_view(md, limit, merge), lambda a, b: a[:2] == b[:2]
            ):
                yield pb.SubscribeDepthResponse(
                    market=spec.symbol,
                    bids=depth_levels(spec, bids),
                    asks=depth_levels(spec, asks),
                    sequence=seq,
                )
        finally:
            sub.close()

    @handles_stream_errors
    async def SubscribeTrades(
        self, request: pb.SubscribeTradesRequest, context: Any
    ) -> AsyncIterator[pb.SubscribeTradesResponse]:
        """First the most recent trades (up to 100, oldest first; possibly none), then every new trade
        in order, batched as they were applied."""
        md = self._market(request.market)
        spec = md.spec
        sub = self._subscribe(context, spec.symbol, "trades", book=False, trades=True)
        try:
            recent = list(md.recent)[-INITIAL_TRADES:]
            cursor = md.trade_seq
            yield pb.SubscribeTradesResponse(trades=[trade_pb(spec, t) for t in recent])
            while await sub.next():
                new = md.trades_after(cursor)
                if new is None:
                    DROPPED.labels("trades").inc()
                    raise ResourceExhausted(
                        f"subscriber fell more than {RECENT_TRADES} trades behind on {spec.symbol}; "
                        "resubscribe"
                    )
                if new:
                    cursor = new[-1][0]
                    yield pb.SubscribeTradesResponse(trades=[trade_pb(spec, t) for t in new])
        finally:
            sub.close()


def _same_ticker(a: pb.Ticker, b: pb.Ticker) -> bool:
    return (
        a.last_price == b.last_price
        and a.open == b.open
        and a.high == b.high
        and a.low == b.low
        and a.volume == b.volume
        and a.quote_volume == b.quote_volume
        and a.trade_count == b.trade_count
        and a.best_bid == b.best_bid
        and a.best_ask == b.best_ask
    )

"""Test helpers: real matching events from random commands, and an independent K-line reference."""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import cast

from exchange.v1 import events_pb2 as ev
from exchange.v1 import market_service_pb2 as pb

from services.common.markets import MarketCatalog, MarketSpec
from services.matching.convert import command_to_proto
from services.matching.engine import MatchingEngine
from services.matching.machine import MatchingMachine
from services.matching.model import (
    BUY,
    FOK,
    GTC,
    GTD,
    IOC,
    LIMIT,
    MARKET,
    SELL,
    CancelAll,
    CancelOrder,
    Command,
    ExpireOrders,
    MoveOrder,
    PlaceOrder,
    ReduceOrder,
)
from testkit.accounts_sim import default_catalog


def kiv(interval: int) -> pb.KlineInterval:
    """An interval code typed as the proto enum (the values are the same)."""
    return cast(pb.KlineInterval, interval)


__all__ = ["Generator", "Trade", "default_catalog", "kiv", "reference_klines", "trades_of"]

START_US = 1_717_372_800_000_000  # 2024-06-03 00:00 UTC, a Monday
MIDS = {
    "BTC_USDT": 3_000_000,
    "ETH_USDT": 300_000,
    "ETH_BTC": 5_000,
    "SOL_USDT": 150_000,
    "DOGE_USDT": 15_000,
}


class Generator:
    """Random commands through a real MatchingMachine; collects the MatchingEvent protos it emits."""

    def __init__(
        self,
        catalog: MarketCatalog | None = None,
        *,
        shard: str = "matching-0",
        seed: int = 0,
        start_us: int = START_US,
        markets: Iterable[str] | None = None,
        max_step_us: int = 90_000_000,
        users: int = 5,
        quiet: float = 0.005,
    ) -> None:
        self.catalog = catalog or default_catalog()
        self.shard = shard
        specs = self.catalog.markets_of_shard(shard)
        self.machine = MatchingMachine(MatchingEngine(shard, specs))
        self.specs: dict[str, MarketSpec] = {m.symbol: m for m in specs}
        self.markets = sorted(markets or self.specs)
        self.rng = random.Random(seed)
        self.time_us = start_us
        self.seq = 0
        self.next_order_id = 1
        self.max_step_us = max_step_us
        self.users = users
        self.quiet = quiet
        self.events: list[ev.MatchingEvent] = []

    @property
    def engine(self) -> MatchingEngine:
        return self.machine.engine

    def step(self) -> list[ev.MatchingEvent]:
        """Apply one random command; returns its events (possibly none)."""
        cmd = self._command()
        self.seq += 1
        r = self.rng.random()
        if r < self.quiet:
            self.time_us += self.rng.randrange(3600_000_000, 36 * 3600_000_000)  # a quiet stretch
        elif r < 0.5:
            self.time_us += self.rng.randrange(0, self.max_step_us)
        proto = command_to_proto("accounts-0", self.seq, self.time_us, cmd)
        proto.previous_sequence = self.seq - 1  # the forward chain: every command goes to this shard
        outcome = self.machine.apply(self.seq, self.time_us, proto)
        events = [ev.MatchingEvent.FromString(b) for b in outcome.events]
        self.events.extend(events)
        return events

    def run(self, commands: int) -> list[ev.MatchingEvent]:
        for _ in range(commands):
            self.step()
        return self.events

    def _open_ids(self, market: str) -> list[int]:
        return list(self.engine.books[market].orders)

    def _command(self) -> Command:
        rng = self.rng
        market = rng.choice(self.markets)
        spec = self.specs[market]
        mid = MIDS.get(market, 10_000)
        user = rng.randrange(1, self.users + 1)
        side = rng.choice((BUY, SELL))
        r = rng.random()
        open_ids = self._open_ids(market)
        if r < 0.6 or not open_ids:
            oid = self.next_order_id
            if open_ids and rng.random() < 0.02:
                oid = rng.choice(open_ids)  # duplicate order id: matching rejects it
            else:
                self.next_order_id += 1
            offset = rng.randrange(-8, 60)  # mostly passive, sometimes crossing
            price = mid - offset if side == BUY else mid + offset
            amount = rng.randrange(1, 50)
            if rng.random() < 0.01:
                price = 0  # invalid
            kind = rng.random()
            tif, expire = GTC, 0
            if kind < 0.1:
                tif = IOC
            elif kind < 0.15:
                tif = FOK
            elif kind < 0.25:
                tif, expire = GTD, self.time_us + rng.randrange(-1_000_000, 600_000_000)
            return PlaceOrder(
                oid,
                user,
                market,
                side,
                LIMIT,
                tif,
                price,
                amount,
                post_only=rng.random() < 0.08,
                stp=rng.randrange(0, 4),
                expire_at=expire,
            )
        if r < 0.65:
            oid = self.next_order_id
            self.next_order_id += 1
            if side == BUY:
                budget = (mid + 30) * rng.randrange(1, 80) * spec.quote_units_per_tick_lot
                return PlaceOrder(
                    oid, user, market, BUY, MARKET, quote_budget=budget, stp=rng.randrange(0, 4)
                )
            return PlaceOrder(
                oid, user, market, SELL, MARKET, amount=rng.randrange(1, 80), stp=rng.randrange(0, 4)
            )
        book = self.engine.books[market]
        target = book.orders[rng.choice(open_ids)]
        if r < 0.71:
            if rng.random() < 0.1:
                return CancelOrder(target.order_id, user, market)  # maybe not the owner
            return CancelOrder(target.order_id, target.user_id, market)
        if r < 0.715:
            return CancelAll(target.user_id, rng.choice((market, "")), rng.choice((0, BUY, SELL)))
        if r < 0.85:
            return ReduceOrder(target.order_id, target.user_id, market, rng.randrange(0, target.amount + 1))
        if r < 0.97:
            offset = rng.randrange(-8, 60)
            return MoveOrder(
                target.order_id, target.user_id, market, mid - offset if target.side == BUY else mid + offset
            )
        return ExpireOrders()


@dataclass(frozen=True)
class Trade:
    time_us: int
    price: int
    lots: int
    quote: int


def trades_of(events: Iterable[ev.MatchingEvent], market: str) -> list[Trade]:
    return [
        Trade(
            e.time_us,
            e.trade_executed.price_ticks,
            e.trade_executed.amount_lots,
            e.trade_executed.quote_units,
        )
        for e in events
        if e.market == market and e.WhichOneof("event") == "trade_executed"
    ]


# --- an independent K-line reference (calendar arithmetic with datetime) ---------------------------

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
STEPS = {
    1: timedelta(minutes=1),
    2: timedelta(minutes=5),
    3: timedelta(minutes=15),
    4: timedelta(hours=1),
    5: timedelta(hours=4),
    6: timedelta(days=1),
    7: timedelta(weeks=1),
}


def to_dt(us: int) -> datetime:
    return EPOCH + timedelta(microseconds=us)


def to_us(dt: datetime) -> int:
    d = dt - EPOCH
    return (d.days * 86_400 + d.seconds) * 1_000_000 + d.microseconds


def bucket(interval: int, us: int) -> datetime:
    dt = to_dt(us).replace(second=0, microsecond=0)
    if interval == 1:
        return dt
    if interval in (2, 3):
        k = 5 if interval == 2 else 15
        return dt.replace(minute=dt.minute - dt.minute % k)
    if interval in (4, 5):
        k = 1 if interval == 4 else 4
        return dt.replace(minute=0, hour=dt.hour - dt.hour % k)
    day = dt.replace(minute=0, hour=0)
    if interval == 6:
        return day
    return day - timedelta(days=day.weekday())  # Monday


Row = tuple[int, int, int, int, int, int, int, int]  # open_time, o, h, l, c, volume, quote, count


def reference_klines(
    trades: list[Trade], interval: int, start_us: int = 0, end_us: int = 0, limit: int = 500, now_us: int = 0
) -> list[Row]:
    """K-lines computed from scratch: intervals overlapping [start, end) from the first trade's interval,
    the `limit` most recent, empty intervals carrying the previous close. Trades in time order."""
    if not trades:
        return []
    bars: dict[datetime, list[int]] = {}
    for t in trades:
        b = bucket(interval, t.time_us)
        row = bars.get(b)
        if row is None:
            bars[b] = [t.price, t.price, t.price, t.price, t.lots, t.quote, 1]
        else:
            row[1] = max(row[1], t.price)
            row[2] = min(row[2], t.price)
            row[3] = t.price
            row[4] += t.lots
            row[5] += t.quote
            row[6] += 1
    step = STEPS[interval]
    first = min(bars)
    last_needed = (
        bucket(interval, end_us - 1) if end_us else bucket(interval, max(now_us, trades[-1].time_us))
    )
    out: list[Row] = []
    close = None
    cur = first
    while cur <= last_needed:
        row = bars.get(cur)
        if row is not None:
            close = row[3]
            out.append((to_us(cur), *row))  # type: ignore[arg-type]
        else:
            assert close is not None
            out.append((to_us(cur), close, close, close, close, 0, 0, 0))
        cur += step
    if start_us:
        s = bucket(interval, start_us)
        out = [r for r in out if r[0] >= to_us(s)]
    return out[-limit:] if limit else []

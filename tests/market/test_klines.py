"""K-line aggregation against an independent reference (calendar arithmetic with datetime)."""

from __future__ import annotations

from datetime import UTC, datetime

from exchange.v1 import events_pb2 as ev
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.market.klines import (
    D1,
    DAY_US,
    H1,
    INTERVALS,
    LENGTH_US,
    M1,
    MINUTE_US,
    W1,
    WEEK_US,
    KlineSeries,
    interval_start,
)
from services.market.state import MarketDataState
from tests.market.sim import Generator, Trade, default_catalog, reference_klines, to_us, trades_of


def rows(
    series: KlineSeries, start: int = 0, end: int = 0, limit: int = 500, now: int = 0
) -> list[tuple[int, ...]]:
    return [b.values() for b in series.query(start, end, limit, now)]


def us(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> int:
    return to_us(datetime(year, month, day, hour, minute, second, tzinfo=UTC))


MONDAY_NEAR = st.builds(
    lambda k, d: 4 * DAY_US + k * WEEK_US + d,
    st.integers(0, 3000),
    st.integers(-3 * 3600_000_000, 3 * 3600_000_000),
)


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[int, list[Trade], int, int, int, int]:
    interval = draw(st.sampled_from(INTERVALS))
    length = LENGTH_US[interval]
    base = draw(st.one_of(st.integers(0, 2_000_000_000_000_000), MONDAY_NEAR, st.integers(0, 10 * DAY_US)))
    offsets = sorted(draw(st.lists(st.integers(0, 40 * length), min_size=1, max_size=60)))
    trades = []
    for o in offsets:
        price = draw(st.integers(1, 10_000))
        lots = draw(st.integers(1, 1_000))
        trades.append(Trade(base + o, price, lots, price * lots * 7))
    lo, hi = max(1, base - 5 * length), base + 45 * length
    start = draw(st.one_of(st.just(0), st.integers(lo, hi)))
    end = draw(st.one_of(st.just(0), st.integers(lo, hi)))
    if end and start >= end:
        start, end = end - 1 if end > 1 else 0, max(start, end) + 1
        if start and start >= end:
            start = 0
    limit = draw(st.integers(1, 120))
    now = base + draw(st.integers(0, 50 * length))
    return interval, trades, start, end, limit, now


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_series_matches_reference(case: tuple[int, list[Trade], int, int, int, int]) -> None:
    interval, trades, start, end, limit, now = case
    series = KlineSeries(interval)
    for t in trades:
        series.add(t.time_us, t.price, t.lots, t.quote)
    assert rows(series, start, end, limit, now) == reference_klines(trades, interval, start, end, limit, now)
    # Every stored K-line is one interval long and aligned.
    for b in series.bars:
        assert interval_start(interval, b.open_time) == b.open_time
    assert sum(b.count for b in series.bars) == len(trades)


def test_state_klines_from_real_trades_every_interval() -> None:
    gen = Generator(seed=7, markets=["BTC_USDT", "ETH_USDT"], quiet=0.01)
    events = gen.run(4000)
    state = MarketDataState(default_catalog().markets.values())
    state.apply_batch("matching-0", events)
    for market in ("BTC_USDT", "ETH_USDT"):
        trades = trades_of(events, market)
        assert len(trades) > 150
        md = state.markets[market]
        end = trades[-1].time_us + 1
        for interval in INTERVALS:
            got = rows(md.klines[interval], 0, end, 1500)
            assert got == reference_klines(trades, interval, 0, end, 1500), interval
            # A range in the middle, and the open-ended form.
            mid = trades[len(trades) // 2].time_us
            assert rows(md.klines[interval], mid, end, 50) == reference_klines(trades, interval, mid, end, 50)
            now = end + 3 * LENGTH_US[interval]
            assert rows(md.klines[interval], 0, 0, 20, now) == reference_klines(
                trades, interval, 0, 0, 20, now
            )


def test_week_starts_monday_utc() -> None:
    s = KlineSeries(W1)
    sunday = us(2024, 6, 2, 23, 59, 59)
    monday = us(2024, 6, 3)
    s.add(sunday, 100, 1, 100)
    s.add(monday, 110, 2, 220)
    assert [b.open_time for b in s.bars] == [us(2024, 5, 27), us(2024, 6, 3)]
    assert interval_start(W1, 0) == us(1969, 12, 29)  # the epoch was a Thursday
    d = KlineSeries(D1)
    d.add(sunday, 100, 1, 100)
    assert d.bars[0].open_time == us(2024, 6, 2)


def test_empty_intervals_carry_close_and_nothing_before_first_trade() -> None:
    s = KlineSeries(H1)
    t0 = us(2024, 6, 3, 10, 30)
    s.add(t0, 100, 1, 100)
    s.add(t0 + 60_000_000, 90, 2, 180)
    s.add(t0 + 3 * 3600_000_000, 120, 1, 120)
    got = s.query(us(2024, 6, 1), us(2024, 6, 3, 15), 500, 0)
    assert [b.values() for b in got] == [
        (us(2024, 6, 3, 10), 100, 100, 90, 90, 3, 280, 2),
        (us(2024, 6, 3, 11), 90, 90, 90, 90, 0, 0, 0),
        (us(2024, 6, 3, 12), 90, 90, 90, 90, 0, 0, 0),
        (us(2024, 6, 3, 13), 120, 120, 120, 120, 1, 120, 1),
        (us(2024, 6, 3, 14), 120, 120, 120, 120, 0, 0, 0),
    ]
    # limit keeps the most recent; a range before the first trade is empty.
    assert [b.open_time for b in s.query(0, us(2024, 6, 3, 15), 2, 0)] == [
        us(2024, 6, 3, 13),
        us(2024, 6, 3, 14),
    ]
    assert s.query(us(2024, 6, 1), us(2024, 6, 2), 500, 0) == []
    assert KlineSeries(H1).query(0, 0, 500, t0) == []


def test_retention_prunes_minutes_and_keeps_carry() -> None:
    m1 = KlineSeries(M1)
    h1 = KlineSeries(H1)
    t0 = us(2024, 1, 1)
    for s in (m1, h1):
        s.add(t0, 100, 1, 100)
        s.add(t0 + 5 * MINUTE_US, 105, 1, 105)
        s.add(t0 + 40 * DAY_US, 200, 1, 200)
    cutoff = t0 + 10 * DAY_US
    assert [b.open_time for b in m1.bars] == [t0 + 40 * DAY_US]
    assert m1.floor() == cutoff
    got = m1.query(t0, cutoff + 3 * MINUTE_US, 500, 0)
    assert [b.values() for b in got] == [
        (cutoff + i * MINUTE_US, 105, 105, 105, 105, 0, 0, 0) for i in range(3)
    ]
    assert len(h1.bars) == 2  # 1h kept forever
    assert h1.query(t0, t0 + 1, 10, 0)[0].values() == (t0, 100, 105, 100, 105, 2, 205, 2)


def test_time_going_backwards_is_clamped_in_state() -> None:
    state = MarketDataState(default_catalog().markets.values())
    t0 = us(2024, 6, 3, 12)

    def trade(seq: int, time_us: int, price: int) -> ev.MatchingEvent:
        e = ev.MatchingEvent(source="matching-0", sequence=seq, time_us=time_us, market="BTC_USDT")
        e.trade_executed.CopyFrom(
            ev.TradeExecuted(trade_id=seq, price_ticks=price, amount_lots=1, quote_units=price)
        )
        return e

    state.apply_batch("matching-0", [trade(1, t0, 100), trade(2, t0 - 2 * MINUTE_US, 90)])
    bars = state.markets["BTC_USDT"].klines[M1].bars
    assert [b.values() for b in bars] == [(t0, 100, 100, 90, 90, 2, 190, 2)]

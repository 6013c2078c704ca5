"""The rolling 24h ticker against trades filtered independently."""

from __future__ import annotations

from datetime import timedelta
from decimal import ROUND_HALF_UP, Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from services.market.klines import M1, KlineSeries
from services.market.ticker import change_ratio, rolling_24h
from tests.market.sim import START_US, to_dt

HOUR = 3600_000_000


def reference_ratio(last: int, open_: int) -> str:
    r = ((Decimal(last) - Decimal(open_)) / Decimal(open_)).quantize(
        Decimal("0.0001"), rounding=ROUND_HALF_UP
    )
    return "0.0000" if r == 0 else str(r)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 72 * HOUR), st.integers(1, 5000), st.integers(1, 100)),
        min_size=1,
        max_size=80,
    ),
    st.integers(0, 80 * HOUR),
)
def test_rolling_24h_matches_filtered_trades(raw: list[tuple[int, int, int]], now_offset: int) -> None:
    trades = sorted(raw)
    series = KlineSeries(M1)
    for t, price, lots in trades:
        series.add(START_US + t, price, lots, price * lots)
    now = START_US + max(now_offset, trades[-1][0])
    # Independent: a trade counts while its minute is one of the 1440 minutes ending with now's minute.
    now_minute = to_dt(now).replace(second=0, microsecond=0)
    first_minute = now_minute - timedelta(hours=24) + timedelta(minutes=1)
    window = [
        (t, p, q)
        for t, p, q in trades
        if first_minute <= to_dt(START_US + t).replace(second=0, microsecond=0) <= now_minute
    ]
    stats = rolling_24h(series, now)
    if not window:
        assert stats is None
        return
    assert stats is not None
    prices = [p for _, p, _ in window]
    assert stats.open == prices[0]
    assert stats.close == prices[-1]
    assert stats.high == max(prices)
    assert stats.low == min(prices)
    assert stats.volume == sum(q for _, _, q in window)
    assert stats.quote == sum(p * q for _, p, q in window)
    assert stats.count == len(window)
    assert change_ratio(trades[-1][1], stats.open) == reference_ratio(trades[-1][1], stats.open)


@given(st.integers(1, 10**12), st.integers(1, 10**12))
def test_change_ratio_rounding(last: int, open_: int) -> None:
    assert change_ratio(last, open_) == reference_ratio(last, open_)


def test_change_ratio_examples() -> None:
    assert change_ratio(10125, 10000) == "0.0125"
    assert change_ratio(5000, 10000) == "-0.5000"
    assert change_ratio(10000, 10000) == "0.0000"
    assert change_ratio(999_999, 1_000_000) == "0.0000"  # -0.000001 rounds to zero without a sign
    assert change_ratio(30000, 10000) == "2.0000"
    assert change_ratio(100_005, 100_000) == "0.0001"  # exactly half: away from zero
    assert change_ratio(99_995, 100_000) == "-0.0001"

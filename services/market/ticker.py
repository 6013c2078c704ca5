"""The rolling 24-hour ticker, computed from the 1-minute K-lines (pure; the caller passes the time).

The window is the 1440 one-minute intervals ending with the one that contains `now`: a trade counts
while its minute is among them, so the window is 24 hours at one-minute granularity.
"""

from __future__ import annotations

from dataclasses import dataclass

from services.market.klines import DAY_US, MINUTE_US, KlineSeries

WINDOW_US = DAY_US


@dataclass(frozen=True, slots=True)
class Stats24h:
    """Integer 24h statistics: prices in ticks, volume in lots, quote volume in quote units."""

    open: int
    high: int
    low: int
    close: int
    volume: int
    quote: int
    count: int


def window_bounds(now_us: int) -> tuple[int, int]:
    """Open times of the first and last 1-minute interval of the window ending at now_us."""
    last = now_us - now_us % MINUTE_US
    return last - WINDOW_US + MINUTE_US, last


def rolling_24h(minutes: KlineSeries, now_us: int) -> Stats24h | None:
    """Aggregate the 1-minute K-lines of the last 24 hours; None when there was no trade in them."""
    first, last = window_bounds(now_us)
    o = h = lo = c = vol = quote = count = 0
    seen = False
    for b in minutes.window(first, last):
        if not seen:
            o, h, lo = b.open, b.high, b.low
            seen = True
        else:
            if b.high > h:
                h = b.high
            if b.low < lo:
                lo = b.low
        c = b.close
        vol += b.volume
        quote += b.quote
        count += b.count
    if not seen:
        return None
    return Stats24h(o, h, lo, c, vol, quote, count)


def change_ratio(last: int, open_: int, decimals: int = 4) -> str:
    """(last - open) / open as a decimal string with `decimals` decimals, rounded half away from zero,
    in exact integer arithmetic ("0.0125", "-0.5000", "0.0000")."""
    if open_ <= 0:
        raise ValueError("open must be positive")
    scale = 10**decimals
    num = abs(last - open_) * scale
    q, r = divmod(num, open_)
    if 2 * r >= open_:
        q += 1
    whole, frac = divmod(q, scale)
    sign = "-" if last < open_ and q else ""
    return f"{sign}{whole}.{str(frac).rjust(decimals, '0')}" if decimals else f"{sign}{whole}"

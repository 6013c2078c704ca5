"""K-line (candlestick) aggregation: pure integer arithmetic, no clock, no I/O.

Intervals are fixed lengths of UTC microseconds. Every interval starts at a multiple of its length since
the Unix epoch, except weeks, which start on Monday 00:00 UTC (the epoch was a Thursday, so weeks are
aligned to 1970-01-05). 4h and 1d are therefore aligned to UTC midnight.

Prices are in ticks, volumes in lots, quote volumes in quote units; decimal strings appear only at the
API edge (services.market.service).

Retention (measured from the market's latest trade time, so it is deterministic): 1m K-lines are kept
for 30 days, 5m and 15m for 180 days, 1h and larger forever. What is pruned is no longer returned; the
close of the newest pruned K-line still carries forward into the empty intervals after it.

A query returns every interval of the range from the first trade on, including intervals without trades:
those carry the previous close as open/high/low/close with zero volume and zero trades.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator
from typing import Any, Final

SECOND_US: Final = 1_000_000
MINUTE_US: Final = 60 * SECOND_US
HOUR_US: Final = 60 * MINUTE_US
DAY_US: Final = 24 * HOUR_US
WEEK_US: Final = 7 * DAY_US

# Interval codes: equal to the KlineInterval enum values of market_service.proto.
M1: Final = 1
M5: Final = 2
M15: Final = 3
H1: Final = 4
H4: Final = 5
D1: Final = 6
W1: Final = 7

INTERVALS: Final = (M1, M5, M15, H1, H4, D1, W1)

LENGTH_US: Final[dict[int, int]] = {
    M1: MINUTE_US,
    M5: 5 * MINUTE_US,
    M15: 15 * MINUTE_US,
    H1: HOUR_US,
    H4: 4 * HOUR_US,
    D1: DAY_US,
    W1: WEEK_US,
}

NAMES: Final[dict[int, str]] = {M1: "1m", M5: "5m", M15: "15m", H1: "1h", H4: "4h", D1: "1d", W1: "1w"}

# Monday 1970-01-05 00:00 UTC: the origin of week intervals.
WEEK_ORIGIN_US: Final = 4 * DAY_US

# How long K-lines are kept (None = forever).
RETENTION_US: Final[dict[int, int | None]] = {
    M1: 30 * DAY_US,
    M5: 180 * DAY_US,
    M15: 180 * DAY_US,
    H1: None,
    H4: None,
    D1: None,
    W1: None,
}

NO_TIME: Final = -(1 << 63)


def origin_of(interval: int) -> int:
    return WEEK_ORIGIN_US if interval == W1 else 0


def interval_start(interval: int, time_us: int) -> int:
    """Open time of the interval that contains `time_us`."""
    length = LENGTH_US[interval]
    return time_us - (time_us - origin_of(interval)) % length


class Bar:
    """One K-line. `open_time` is the interval's start (inclusive)."""

    __slots__ = ("close", "count", "high", "low", "open", "open_time", "quote", "volume")

    def __init__(
        self,
        open_time: int,
        open: int,
        high: int,
        low: int,
        close: int,
        volume: int = 0,
        quote: int = 0,
        count: int = 0,
    ) -> None:
        self.open_time = open_time
        self.open = open
        self.high = high
        self.low = low
        self.close = close
        self.volume = volume
        self.quote = quote
        self.count = count

    def values(self) -> tuple[int, int, int, int, int, int, int, int]:
        return (
            self.open_time,
            self.open,
            self.high,
            self.low,
            self.close,
            self.volume,
            self.quote,
            self.count,
        )

    @staticmethod
    def from_values(v: Any) -> Bar:
        t, o, h, low, c, vol, q, n = v
        return Bar(int(t), int(o), int(h), int(low), int(c), int(vol), int(q), int(n))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Bar) and self.values() == other.values()

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Bar{self.values()}"


def _open_time(b: Bar) -> int:
    return b.open_time


class KlineSeries:
    """The K-lines of one market and one interval: the intervals that had trades, oldest first."""

    __slots__ = ("bars", "carry", "first_open", "interval", "length", "origin", "pruned_until", "retention")

    def __init__(self, interval: int) -> None:
        self.interval = interval
        self.length = LENGTH_US[interval]
        self.origin = origin_of(interval)
        self.retention = RETENTION_US[interval]
        self.bars: list[Bar] = []
        self.first_open: int | None = None  # open time of the first interval that ever had a trade
        self.carry: int | None = None  # close of the newest pruned K-line
        self.pruned_until = NO_TIME  # K-lines opening before this were pruned

    # --- aggregation ---------------------------------------------------------------------------

    def add(self, time_us: int, price: int, lots: int, quote: int) -> Bar | None:
        """Add one trade; returns the K-line it went into (None if it fell before the retention)."""
        start = time_us - (time_us - self.origin) % self.length
        bars = self.bars
        if bars:
            last = bars[-1]
            if last.open_time == start:  # the hot path: another trade in the current interval
                if price > last.high:
                    last.high = price
                elif price < last.low:
                    last.low = price
                last.close = price
                last.volume += lots
                last.quote += quote
                last.count += 1
                return last
            if start < last.open_time:
                return self._add_late(start, price, lots, quote)
        elif start < self.pruned_until:
            return None
        bar = Bar(start, price, price, price, price, lots, quote, 1)
        bars.append(bar)
        if self.first_open is None:
            self.first_open = start
        if self.retention is not None:
            self._prune(start)
        return bar

    def _add_late(self, start: int, price: int, lots: int, quote: int) -> Bar | None:
        """A trade older than the newest K-line (time is normally monotonic; kept exact anyway)."""
        if start < self.pruned_until:
            return None
        bars = self.bars
        i = bisect_left(bars, start, key=_open_time)
        if i < len(bars) and bars[i].open_time == start:
            b = bars[i]
            b.high = max(b.high, price)
            b.low = min(b.low, price)
            b.close = price  # the latest trade by arrival; only reachable with non-monotonic time
            b.volume += lots
            b.quote += quote
            b.count += 1
            return b
        bar = Bar(start, price, price, price, price, lots, quote, 1)
        bars.insert(i, bar)
        if self.first_open is None or start < self.first_open:
            self.first_open = start
        return bar

    def _prune(self, newest_open: int) -> None:
        assert self.retention is not None
        cutoff = interval_start(self.interval, newest_open - self.retention)
        bars = self.bars
        if bars[0].open_time < cutoff:
            k = bisect_left(bars, cutoff, key=_open_time)
            self.carry = bars[k - 1].close
            del bars[:k]
        if self.carry is not None:
            self.pruned_until = max(self.pruned_until, cutoff)

    # --- queries -------------------------------------------------------------------------------

    @property
    def last(self) -> Bar | None:
        return self.bars[-1] if self.bars else None

    def floor(self) -> int | None:
        """The first open time a query can return (None before the first trade)."""
        if self.first_open is None:
            return None
        return max(self.first_open, self.pruned_until)

    def query(self, start_us: int, end_us: int, limit: int, now_us: int) -> list[Bar]:
        """The K-lines of the intervals overlapping [start_us, end_us), oldest first, at most the `limit`
        most recent. start_us = 0: from the first trade; end_us = 0: up to the interval containing
        max(now_us, last trade). Intervals without trades carry the previous close."""
        floor = self.floor()
        if floor is None or limit <= 0:
            return []
        last_bar = self.bars[-1] if self.bars else None
        lo = floor
        if start_us > 0:
            lo = max(lo, interval_start(self.interval, start_us))
        if end_us > 0:
            hi = interval_start(self.interval, end_us - 1)
        else:
            newest = max(now_us, last_bar.open_time if last_bar is not None else now_us)
            hi = interval_start(self.interval, newest)
        if hi < lo:
            return []
        length = self.length
        first = max(lo, hi - (limit - 1) * length)
        bars = self.bars
        i = bisect_left(bars, first, key=_open_time)
        prev = bars[i - 1].close if i > 0 else self.carry
        out: list[Bar] = []
        n = len(bars)
        t = first
        while t <= hi:
            if i < n and bars[i].open_time == t:
                b = bars[i]
                out.append(Bar(t, b.open, b.high, b.low, b.close, b.volume, b.quote, b.count))
                prev = b.close
                i += 1
            elif prev is not None:
                out.append(Bar(t, prev, prev, prev, prev))
            t += length
        return out

    def since(self, open_time: int) -> Iterator[Bar]:
        """Stored K-lines opening at or after `open_time` (for subscriptions)."""
        bars = self.bars
        for i in range(bisect_left(bars, open_time, key=_open_time), len(bars)):
            yield bars[i]

    def window(self, first_open: int, last_open: int) -> Iterator[Bar]:
        """Stored K-lines with first_open <= open_time <= last_open."""
        bars = self.bars
        for i in range(bisect_left(bars, first_open, key=_open_time), len(bars)):
            b = bars[i]
            if b.open_time > last_open:
                break
            yield b

    # --- snapshot ------------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        return {
            "interval": self.interval,
            "bars": [b.values() for b in self.bars],
            "first_open": self.first_open,
            "carry": self.carry,
            "pruned_until": self.pruned_until,
        }

    @classmethod
    def restore(cls, data: dict[str, Any]) -> KlineSeries:
        s = cls(int(data["interval"]))
        s.bars = [Bar.from_values(v) for v in data["bars"]]
        s.first_open = None if data["first_open"] is None else int(data["first_open"])
        s.carry = None if data["carry"] is None else int(data["carry"])
        s.pruned_until = int(data["pruned_until"])
        return s

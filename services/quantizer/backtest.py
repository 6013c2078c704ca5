"""Backtest: a strategy run against recorded trades THROUGH the real matching book.

Input: historical trades as (time_us, price_ticks, amount_lots, taker_side) tuples (taker_side 1 = buy,
2 = sell, the services.matching.model codes), time never decreasing: any iterable, so a reader of the
history service can feed it, or a CSV file (`read_trades_csv`):

    time_us,price,amount,taker_side
    1700000000000000,30000.01,0.0105,buy
    1700000000500000,29999.5,0.2,sell

with a header line exactly as above, the price and amount as decimals in the market's units (multiples
of its tick and lot), taker_side `buy` or `sell`; blank lines and lines starting with `#` are skipped.

Fill model (what happens, exactly):
- The strategy's orders rest in a services.matching.book.OrderBook of the market, as user 1, placed as the
  accounts service places them: GTC limit orders carrying the market's maker and taker fee rates. Orders
  the accounts service would refuse (below the minimum amount or notional) are answered Done(rejected).
- Each historical trade becomes an IOC limit order of a "market" user (2) on the trade's taker side, at
  the trade's price, for the trade's amount. The engine matches it by its own rules against the
  strategy's resting orders of the other side priced at or better than the trade: fills at the
  strategy's (maker) price, price then time priority among its own orders, the maker fee in the asset
  received, at most the trade's amount in total (several of the strategy's orders fill when the trade
  went through their prices). The strategy's order is thus AHEAD of the whole historical queue at its
  price: a trade printing at its price fills it ("touch", the default). With fill_model="through" the
  trade must print at least one tick beyond the order's price (the counter order is priced one tick
  inside), i.e. the queue at the order's own price is assumed never to reach it. The rest of the IOC is
  canceled; the recorded price series itself is not changed (no market impact).
- A trade that cannot reach any resting order of the strategy (its price does not cross the best one)
  is not sent to the book: the engine would answer only accepted + canceled for it, so skipping it
  changes nothing.
- The strategy's market orders (a grid's initial base purchase and stop sell, DCA base orders and exits,
  recurring buys) take a synthetic resting order of the market user at the last trade price (one tick
  outside the strategy's own resting orders if those are at or beyond it, so it never trades with them)
  with enough depth: they fill as takers at that price with the taker fee, no slippage. Before the
  first trade there is no price, and a market order gets no fill (done: canceled, no liquidity).
- Per trade, in this order: a Timer at the strategy's wakeup() time if that is due at or before the
  trade (market orders then trade at the previous price), the counter order and the fills it makes, then
  Tick(price, time). A tick strictly inside the strategy's band() is not delivered (the strategy
  declares that it changes nothing; `every_tick=True` delivers all, and the tests check both agree).
- Events the book emits for the strategy become its Fill/Done events (each fill's trade id is the
  book's), and its intents are executed right away in order, so one trade may cascade (a fill, the
  counter order, ...).

Output: the same Report a live strategy gives (report.py) at the last trade's price and time, and an
equity curve (time, value in quote units) sampled at most once per `equity_interval_us` plus the end,
which `write_equity_png` draws (matplotlib, optional). `progress=True` shows a tqdm bar when tqdm is
installed.

Command line (a JSON file with the strategy's fields, the names of params.py):

    python -m services.quantizer.backtest --market BTC_USDT --trades trades.csv --strategy grid.json \
        [--config deploy/exchange.toml] [--fill-model touch|through] [--png equity.png] [--progress]
"""

from __future__ import annotations

import argparse
import json
import sys
import tomllib
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

from services.common.errors import ExchangeError, InvalidArgument, Reason
from services.common.markets import MarketCatalog, MarketSpec
from services.common.units import AmountError, format_units
from services.matching.book import OrderBook
from services.matching.model import (
    BUY,
    DONE_REJECTED,
    GTC,
    IOC,
    LIMIT,
    MARKET,
    SELL,
    Event,
    OrderDone,
    PlaceOrder,
    TradeExecuted,
)
from services.quantizer.core import (
    NEVER,
    Cancel,
    Done,
    Fill,
    Place,
    Strategy,
    Tick,
    Timer,
    order_problem,
)
from services.quantizer.report import Report, build_report, describe, report_fields

STRATEGY_USER: Final = 1
MARKET_USER: Final = 2
TOUCH: Final = "touch"
THROUGH: Final = "through"
CSV_HEADER: Final = "time_us,price,amount,taker_side"
HOUR_US: Final = 3_600_000_000
PROGRESS_EVERY: Final = 16_384

Trade = tuple[int, int, int, int]


@dataclass(slots=True)
class BacktestResult:
    report: Report
    equity: list[tuple[int, int]]  # (time_us, value in quote units)
    trades: int  # historical trades read
    counter_orders: int  # of them, sent to the book (could reach a resting order)
    fill_model: str
    first_time: int
    last_time: int
    stats: dict[str, int] = field(default_factory=dict)


class Backtest:
    """One strategy, one book, fed trade by trade (`feed` may be called several times)."""

    def __init__(
        self,
        spec: MarketSpec,
        strategy: Strategy,
        *,
        fill_model: str = TOUCH,
        every_tick: bool = False,
        equity_interval_us: int = HOUR_US,
    ) -> None:
        if fill_model not in (TOUCH, THROUGH):
            raise InvalidArgument("fill_model must be touch or through", Reason.INVALID_FIELD)
        if strategy.spec.symbol != spec.symbol:
            raise InvalidArgument("the strategy trades another market", Reason.INVALID_FIELD)
        self.spec = spec
        self.strategy = strategy
        self.book = OrderBook(spec)
        self.fill_model = fill_model
        self.every_tick = every_tick
        self.equity_interval_us = max(1, equity_interval_us)
        self.next_order_id = 1
        self.cid_of: dict[int, str] = {}
        self.id_of: dict[str, int] = {}
        self.price = 0
        self.time = 0
        self.first_time = -1
        self.trades = 0
        self.counter_orders = 0
        self.market_orders = 0
        self.rejected = 0
        self.equity: list[tuple[int, int]] = []
        self._next_equity = 0
        self._out: list[Event] = []

    # --- driving -------------------------------------------------------------------------------

    def feed(self, trades: Iterable[Trade], *, progress: bool = False) -> None:
        strategy = self.strategy
        book = self.book
        spec = self.spec
        k = spec.quote_units_per_tick_lot
        bpl = spec.base_units_per_lot
        acct = strategy.account
        through = self.fill_model == THROUGH
        every = self.every_tick
        lo, hi = strategy.band()
        wake = strategy.wakeup()
        ask = book.best_ask()
        bid = book.best_bid()
        best_ask = NEVER if ask is None else ask
        best_bid = 0 if bid is None else bid
        last_t = self.time
        n = self.trades
        next_equity = self._next_equity
        interval = self.equity_interval_us
        bar = _progress_bar() if progress else None
        changed = False
        for t, price, lots, side in trades:
            if t < last_t:
                raise InvalidArgument(
                    f"trade {n + 1}: time {t} is before the previous trade's {last_t}", Reason.INVALID_FIELD
                )
            last_t = t
            n += 1
            if self.first_time < 0:
                self.first_time = t
            if wake is not None and wake <= t:
                self._timers(t)
                changed = True
            self.price = price
            self.time = t
            if side == BUY:
                limit = price - 1 if through else price
                if best_ask <= limit:
                    self.counter_orders += 1
                    self._counter(BUY, limit, lots)
                    changed = True
            elif side == SELL:
                limit = price + 1 if through else price
                if best_bid >= limit:
                    self.counter_orders += 1
                    self._counter(SELL, limit, lots)
                    changed = True
            else:
                raise InvalidArgument(
                    f"trade {n}: taker side must be 1 (buy) or 2 (sell)", Reason.INVALID_FIELD
                )
            if changed:
                lo, hi = strategy.band()
            if every or price <= lo or price >= hi:
                self._deliver(Tick(price, t))
                changed = True
            if changed:
                changed = False
                lo, hi = strategy.band()
                wake = strategy.wakeup()
                ask = book.best_ask()
                bid = book.best_bid()
                best_ask = NEVER if ask is None else ask
                best_bid = 0 if bid is None else bid
            if t >= next_equity:
                self.equity.append((t, acct.quote + acct.base * price * k // bpl))
                next_equity = t + interval
            if bar is not None and n % PROGRESS_EVERY == 0:
                bar.update(PROGRESS_EVERY)
        if bar is not None:
            bar.update(n % PROGRESS_EVERY)
            bar.close()
        self.trades = n
        self._next_equity = next_equity

    def advance(self, time_us: int) -> None:
        """Deliver the timers due up to `time_us` (for example the end of the backtest period)."""
        if time_us > self.time:
            self._timers(time_us)
            self.time = time_us

    def result(self) -> BacktestResult:
        acct = self.strategy.account
        spec = self.spec
        value = acct.quote + acct.base * self.price * spec.quote_units_per_tick_lot // spec.base_units_per_lot
        equity = list(self.equity)
        if not equity or equity[-1][0] != self.time:
            equity.append((self.time, value))
        return BacktestResult(
            report=build_report(self.strategy, self.price, self.time),
            equity=equity,
            trades=self.trades,
            counter_orders=self.counter_orders,
            fill_model=self.fill_model,
            first_time=max(0, self.first_time),
            last_time=self.time,
            stats={
                "market_orders": self.market_orders,
                "rejected_orders": self.rejected,
                "book_trades": self.book.next_trade_id - 1,
            },
        )

    # --- internals -----------------------------------------------------------------------------

    def _timers(self, until: int) -> None:
        strategy = self.strategy
        wake = strategy.wakeup()
        while wake is not None and wake <= until:
            self.time = max(self.time, wake)
            self._deliver(Timer(wake))
            nxt = strategy.wakeup()
            if nxt is not None and nxt <= wake:
                raise RuntimeError(f"{strategy.KIND} strategy asked for a timer at {nxt} after one at {wake}")
            wake = nxt

    def _new_id(self) -> int:
        oid = self.next_order_id
        self.next_order_id = oid + 1
        return oid

    def _counter(self, side: int, price: int, lots: int) -> None:
        out = self._out
        out.clear()
        cmd = PlaceOrder(self._new_id(), MARKET_USER, self.spec.symbol, side, LIMIT, IOC, price, lots)
        self.book.place(cmd, self.time, out)
        events = self._translate(out)
        if events:
            self._deliver_all(events)

    def _deliver(self, event: Tick | Timer | Fill | Done) -> None:
        self._deliver_all([event])

    def _deliver_all(self, events: list[Any]) -> None:
        queue: deque[Any] = deque(events)
        strategy = self.strategy
        while queue:
            intents = strategy.apply(queue.popleft())
            for intent in intents:
                queue.extend(self._execute(intent))

    def _execute(self, intent: Place | Cancel) -> list[Fill | Done]:
        book = self.book
        now = self.time
        out = self._out
        out.clear()
        if type(intent) is Cancel:
            oid = self.id_of.get(intent.cid)
            if oid is None:
                return []
            book.cancel(oid, STRATEGY_USER, now, out)
            return self._translate(out)
        place: Place = intent  # type: ignore[assignment]
        spec = self.spec
        if order_problem(spec, place) is not None:
            self.rejected += 1
            return [Done(place.cid, DONE_REJECTED, now)]
        oid = self._new_id()
        self.cid_of[oid] = place.cid
        self.id_of[place.cid] = oid
        if not place.is_market:
            cmd = PlaceOrder(
                oid,
                STRATEGY_USER,
                spec.symbol,
                place.side,
                LIMIT,
                GTC,
                place.price,
                place.lots,
                maker_fee_ppm=spec.maker_fee_ppm,
                taker_fee_ppm=spec.taker_fee_ppm,
            )
            book.place(cmd, now, out)
            return self._translate(out)
        self.market_orders += 1
        liquidity = 0
        if self.price > 0:
            if place.side == BUY:
                bid = book.best_bid()
                at = max(self.price, bid + 1 if bid is not None else 0)
                depth = place.quote_budget // (at * spec.quote_units_per_tick_lot) + 1
                liquidity = self._new_id()
                book.place(
                    PlaceOrder(liquidity, MARKET_USER, spec.symbol, SELL, LIMIT, GTC, at, depth), now, out
                )
            else:
                ask = book.best_ask()
                at = min(self.price, ask - 1 if ask is not None else self.price)
                if at >= 1:
                    liquidity = self._new_id()
                    book.place(
                        PlaceOrder(liquidity, MARKET_USER, spec.symbol, BUY, LIMIT, GTC, at, place.lots),
                        now,
                        out,
                    )
        cmd = PlaceOrder(
            oid,
            STRATEGY_USER,
            spec.symbol,
            place.side,
            MARKET,
            IOC,
            0,
            place.lots,
            place.quote_budget,
            maker_fee_ppm=spec.maker_fee_ppm,
            taker_fee_ppm=spec.taker_fee_ppm,
        )
        book.place(cmd, now, out)
        if liquidity and liquidity in book.orders:
            book.cancel(liquidity, MARKET_USER, now, out)
        return self._translate(out)

    def _translate(self, out: list[Event]) -> list[Fill | Done]:
        """The strategy's events among the book's."""
        events: list[Fill | Done] = []
        now = self.time
        cid_of = self.cid_of
        for e in out:
            te = type(e)
            if te is TradeExecuted:
                tr: TradeExecuted = e  # type: ignore[assignment]
                if tr.maker_user_id == STRATEGY_USER:
                    side = SELL if tr.taker_side == BUY else BUY
                    events.append(
                        Fill(
                            cid_of[tr.maker_order_id],
                            tr.trade_id,
                            side,
                            tr.price,
                            tr.amount,
                            tr.quote_units,
                            tr.base_units,
                            tr.maker_fee,
                            now,
                            True,
                        )
                    )
                elif tr.taker_user_id == STRATEGY_USER:
                    events.append(
                        Fill(
                            cid_of[tr.taker_order_id],
                            tr.trade_id,
                            tr.taker_side,
                            tr.price,
                            tr.amount,
                            tr.quote_units,
                            tr.base_units,
                            tr.taker_fee,
                            now,
                            False,
                        )
                    )
            elif te is OrderDone:
                done: OrderDone = e  # type: ignore[assignment]
                if done.order.user_id == STRATEGY_USER:
                    oid = done.order.order_id
                    cid = cid_of.pop(oid, "")
                    self.id_of.pop(cid, None)
                    if cid:
                        events.append(Done(cid, done.reason, now))
        out.clear()
        return events


def run_backtest(
    spec: MarketSpec,
    strategy: Strategy,
    trades: Iterable[Trade],
    *,
    fill_model: str = TOUCH,
    every_tick: bool = False,
    equity_interval_us: int = HOUR_US,
    end_time_us: int = 0,
    progress: bool = False,
) -> BacktestResult:
    bt = Backtest(
        spec, strategy, fill_model=fill_model, every_tick=every_tick, equity_interval_us=equity_interval_us
    )
    bt.feed(trades, progress=progress)
    if end_time_us:
        bt.advance(end_time_us)
    return bt.result()


# --- CSV ---------------------------------------------------------------------------------------


def read_trades_csv(path: str | Path, spec: MarketSpec) -> Iterator[Trade]:
    """The trades of a CSV file (format in the module docstring), lazily."""
    sides = {"buy": BUY, "sell": SELL}
    prices: dict[str, int] = {}
    amounts: dict[str, int] = {}
    with open(path, encoding="utf-8") as f:
        header = f.readline().strip()
        if header != CSV_HEADER:
            raise InvalidArgument(f"{path}: the first line must be {CSV_HEADER!r}", Reason.INVALID_FIELD)
        for number, line in enumerate(f, start=2):
            if not line.strip() or line.startswith("#"):
                continue
            parts = line.rstrip("\r\n").split(",")
            try:
                if len(parts) != 4:
                    raise InvalidArgument("expected 4 fields", Reason.INVALID_FIELD)
                t_text, p_text, a_text, s_text = parts
                if not (t_text.isascii() and t_text.isdigit()):
                    raise InvalidArgument("time_us must be a non-negative integer", Reason.INVALID_FIELD)
                price = prices.get(p_text)
                if price is None:
                    price = spec.parse_price(p_text)
                    if len(prices) > 100_000:
                        prices.clear()
                    prices[p_text] = price
                amount = amounts.get(a_text)
                if amount is None:
                    amount = spec.parse_amount(a_text)
                    if len(amounts) > 100_000:
                        amounts.clear()
                    amounts[a_text] = amount
                side = sides.get(s_text.strip())
                if side is None:
                    raise InvalidArgument("taker_side must be buy or sell", Reason.INVALID_FIELD)
            except (AmountError, InvalidArgument) as exc:
                raise InvalidArgument(f"{path}:{number}: {exc}", Reason.INVALID_FIELD) from None
            yield int(t_text), price, amount, side


def write_trades_csv(path: str | Path, spec: MarketSpec, trades: Iterable[Trade]) -> int:
    """Write trades in the CSV format; returns how many."""
    n = 0
    with open(path, "w", encoding="utf-8") as f:
        f.write(CSV_HEADER + "\n")
        for t, price, lots, side in trades:
            side_text = "buy" if side == BUY else "sell"
            f.write(f"{t},{spec.format_price(price)},{spec.format_amount(lots)},{side_text}\n")
            n += 1
    return n


# --- optional extras: progress bar and PNG -----------------------------------------------------


def _progress_bar() -> Any:
    try:
        from tqdm import tqdm  # type: ignore[import-not-found, import-untyped, unused-ignore]
    except ImportError:
        print("progress: tqdm is not installed (pip install tqdm); running without a bar", file=sys.stderr)
        return None
    return tqdm(unit=" trades", unit_scale=True, mininterval=0.5)


def write_equity_png(
    path: str | Path, spec: MarketSpec, equity: list[tuple[int, int]], title: str = ""
) -> None:
    """Draw the equity curve (value in quote over time) as a PNG. Needs matplotlib; the values stay
    integers (the axis labels are formatted from the asset units)."""
    try:
        import matplotlib  # type: ignore[import-not-found, import-untyped, unused-ignore]

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # type: ignore[import-not-found, import-untyped, unused-ignore]
        from matplotlib.ticker import FuncFormatter  # type: ignore[import-not-found, import-untyped, unused-ignore]
    except ImportError as exc:
        raise RuntimeError("the equity PNG needs matplotlib (pip install matplotlib)") from exc
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    seconds = [t // 1_000_000 for t, _ in equity]
    values = [v for _, v in equity]
    fig, ax = plt.subplots(figsize=(10, 4), dpi=100)
    ax.plot(seconds, values, linewidth=1.2)
    ax.set_title(title or f"{spec.symbol} equity ({spec.quote.symbol})")
    ax.yaxis.set_major_formatter(FuncFormatter(lambda y, _: format_units(int(y), spec.quote.decimals)))
    ax.xaxis.set_major_formatter(
        FuncFormatter(lambda x, _: (epoch + timedelta(seconds=int(x))).strftime("%Y-%m-%d\n%H:%M"))
    )
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(str(path))
    plt.close(fig)


# --- command line ------------------------------------------------------------------------------


def backtest_files(
    spec: MarketSpec,
    trades_csv: str,
    strategy_json: str,
    *,
    fill_model: str = TOUCH,
    progress: bool = False,
    png: str | None = None,
) -> BacktestResult:
    """A backtest of the strategy in a JSON file (params.py names) over a CSV file of trades; the
    equity curve written to `png` when given. Used by this module's command and `exchange backtest`."""
    from services.quantizer.params import strategy_from_config  # params builds on this module

    with open(strategy_json, encoding="utf-8") as f:
        config = json.load(f)
    result = run_backtest(
        spec,
        strategy_from_config(spec, 1, config),
        read_trades_csv(trades_csv, spec),
        fill_model=fill_model,
        progress=progress,
    )
    if png:
        write_equity_png(png, spec, result.equity)
    return result


def result_lines(spec: MarketSpec, result: BacktestResult, as_json: bool) -> list[str]:
    """What the commands print: the report as JSON, or in lines for people."""
    if as_json:
        fields = report_fields(spec, result.report)
        fields["trades"] = result.trades
        fields["counter_orders"] = result.counter_orders
        return [json.dumps(fields, indent=2)]
    return [
        f"{result.trades} trades, {result.counter_orders} reached the strategy's orders",
        *describe(spec, result.report),
    ]


def main(argv: list[str] | None = None) -> int:
    root = Path(__file__).resolve().parent.parent.parent
    ap = argparse.ArgumentParser(
        description="Backtest a grid, DCA or recurring-buy strategy on recorded trades."
    )
    ap.add_argument(
        "--config", default=str(root / "deploy" / "exchange.toml"), help="exchange config (markets)"
    )
    ap.add_argument("--market", required=True)
    ap.add_argument("--trades", required=True, help=f"CSV file: {CSV_HEADER}")
    ap.add_argument("--strategy", required=True, help='JSON file: {"kind": "grid", ...} (params.py names)')
    ap.add_argument("--fill-model", choices=(TOUCH, THROUGH), default=TOUCH)
    ap.add_argument("--png", help="write the equity curve here (needs matplotlib)")
    ap.add_argument("--progress", action="store_true", help="progress bar (needs tqdm)")
    ap.add_argument("--json", action="store_true", help="print the report as JSON")
    args = ap.parse_args(argv)
    try:
        with open(args.config, "rb") as f:
            catalog = MarketCatalog.from_dict(tomllib.load(f))
        spec = catalog.markets.get(args.market)
        if spec is None:
            raise InvalidArgument(f"unknown market {args.market}", Reason.UNKNOWN_MARKET)
        result = backtest_files(
            spec, args.trades, args.strategy, fill_model=args.fill_model, progress=args.progress, png=args.png
        )
    except (ExchangeError, OSError, ValueError, RuntimeError) as exc:
        print(f"backtest: {exc}", file=sys.stderr)
        return 1
    for line in result_lines(spec, result, args.json):
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

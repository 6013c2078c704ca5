"""Spot grid: levels, preview (PreviewGrid) and the grid state machine.

Levels. `intervals` = N intervals between `lower` and `upper` give N+1 levels L_0 = lower .. L_N = upper,
in ticks:
- arithmetic: L_i = lower + round((upper - lower) * i / N);
- geometric: L_i = round(lower^(1 - i/N) * upper^(i/N)), computed exactly: the integer m with
  m^N <= lower^(N-i) * upper^i < (m+1)^N, plus one when (2m+1)^N <= 2^N * lower^(N-i) * upper^i.
Rounding is to the nearest tick, halves up. Indices above N (trailing up) use the same formulas.

Quantity. Every level trades the same base quantity `lots` (a level added by trailing up trades the quote
freed at the bottom, as Binance's trailing grid does). At the start price P the level nearest P (ties:
the lower one) stays empty, levels below hold buys of `lots`, levels above hold sells of `lots`. The base
for those sells comes from the invested base, the rest is bought at start with a market buy of
notional(P, g) where g is the fewest lots whose base net of the taker fee covers the sells. The quote
needed for `lots` is

    Σ buys notional(L_i, lots) + notional(P, g) + reserve,   reserve = notional(L_N, 1 lot)

(the reserve covers the at most one lot of base a counter sell may round away, see below); `lots` is the
largest quantity the investment covers, and the minimum investment is the quote needed for the smallest
valid quantity: every order must meet the market's minimum amount and notional (the lowest buy at L_0,
the smallest counter sell net of fees at L_1).

Behaviour. A fully filled buy at level j places a sell at j+1 of the base received net of the maker fee
(the fee is taken in base), rounded down to the lot; the remainder ("dust", less than one lot) is added
to the next counter sell, so no base is lost to rounding. A fully filled sell at level j places a buy at
j-1 of that level's quantity. Partial fills accumulate until the order is complete. A fill whose trade id
was seen is ignored. Trigger: the grid waits until the last price crosses the trigger (from the side of
the first price seen), then starts at that price. Stop-loss (price <= stop_loss) and take-profit
(price >= take_profit) stop the grid: cancel every order, and with `sell_on_stop` sell the base at
market. Trailing up: once every sell has filled and the price reaches the level above the top, the
lowest buy is canceled and, when its cancel is done, a buy of the freed quote is placed at the old top;
the range moves up one level (never past `trailing_limit` when set). One shift per qualifying tick.

Profit per grid (preview, and the realized profit of a matched pair): buying `lots` at L_i and selling the
base received at L_{i+1}:

    profit_i = floor(net * L_{i+1} * q / b) - fee(that, maker) - notional(L_i, lots)

with net = lots * b - fee(lots * b, maker), b base units per lot, q quote units per tick and lot. A grid is
refused unless L_{i+1} * (1 - f)^2 > L_i for every step (the step beats the maker fee paid twice) and
every profit_i is positive. The realized profit of a sell fill at level j is its quote net of fee minus
the cost of the base it sold at the buy price of level j-1 (including the buy's fee, rounded up); a fully
filled sell is one matched pair.
"""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import asdict, dataclass
from fractions import Fraction
from typing import Any, Final

from services.common.errors import InvalidArgument, Reason
from services.common.markets import MarketSpec, fee
from services.common.units import INT64_MAX
from services.matching.model import BUY, DONE_FILLED, SELL
from services.quantizer.core import (
    FAILED,
    NEVER,
    NEW,
    RUNNING,
    STOP_CANCEL_AND_SELL,
    STOP_CANCEL_ORDERS,
    STOPPING,
    WAITING,
    Fill,
    Order,
    S,
    Strategy,
    amount_text,
    ceil_div,
    decimal_string,
    money,
    ppm_string,
    price_text,
    round_half_up,
)

MAX_GRID_INTERVALS: Final = 500  # the domain bound on N (Binance allows up to a few hundred grids)

ARITHMETIC: Final = 1  # exchange.v1.GridSpacing numbers
GEOMETRIC: Final = 2


@dataclass(frozen=True, slots=True)
class GridParams:
    lower: int  # ticks
    upper: int  # ticks
    intervals: int
    spacing: int = ARITHMETIC
    invest_quote: int = 0  # quote units
    invest_base: int = 0  # base units
    trigger: int = 0  # ticks; 0 = start at once
    stop_loss: int = 0  # ticks; 0 = none
    take_profit: int = 0  # ticks; 0 = none
    sell_on_stop: bool = False  # stop-loss / take-profit also sell the base at market
    trailing_up: bool = False
    trailing_limit: int = 0  # ticks; the highest level trailing may add (0 = no limit)
    # the initial purchase may pay up to this much above the start price (ppm); the API's default is
    # DEFAULT_BUY_SLIPPAGE_PPM (services.quantizer.params)
    buy_slippage_ppm: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_dict(data: dict[str, Any]) -> GridParams:
        return GridParams(
            lower=int(data["lower"]),
            upper=int(data["upper"]),
            intervals=int(data["intervals"]),
            spacing=int(data["spacing"]),
            invest_quote=int(data["invest_quote"]),
            invest_base=int(data["invest_base"]),
            trigger=int(data["trigger"]),
            stop_loss=int(data["stop_loss"]),
            take_profit=int(data["take_profit"]),
            sell_on_stop=bool(data["sell_on_stop"]),
            trailing_up=bool(data["trailing_up"]),
            trailing_limit=int(data["trailing_limit"]),
            buy_slippage_ppm=int(data.get("buy_slippage_ppm", 0)),
        )


# --- levels ------------------------------------------------------------------------------------


def _root_floor(num: int, den: int, n: int, guess: int) -> int:
    """The largest m >= 1 with m^n * den <= num, searched outwards from `guess`."""
    m = max(1, guess)
    if m**n * den <= num:
        step = 1
        while (m + step) ** n * den <= num:
            step *= 2
        lo, hi = m + step // 2, m + step  # lo fits, hi does not
    else:
        step = 1
        while m - step >= 1 and (m - step) ** n * den > num:
            step *= 2
        lo, hi = max(1, m - step), m - step // 2
        if lo**n * den > num:
            return 1
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if mid**n * den <= num:
            lo = mid
        else:
            hi = mid
    return lo


def level_price(lower: int, upper: int, n: int, spacing: int, i: int, guess: int = 0) -> int:
    """Price (ticks) of level i >= 0 of the grid (see the module docstring for the rounding)."""
    if spacing == ARITHMETIC:
        return lower + round_half_up(Fraction((upper - lower) * i, n))
    if i <= n:
        num, den = upper**i * lower ** (n - i), 1
    else:
        num, den = upper**i, lower ** (i - n)
    m = _root_floor(num, den, n, guess or lower)
    if (2 * m + 1) ** n * den <= num << n:
        m += 1
    return m


def grid_levels(lower: int, upper: int, n: int, spacing: int) -> list[int]:
    levels: list[int] = []
    for i in range(n + 1):
        guess = 0
        if spacing == GEOMETRIC and len(levels) >= 2:
            guess = levels[-1] * levels[-1] // levels[-2]
        elif levels:
            guess = levels[-1]
        levels.append(level_price(lower, upper, n, spacing, i, guess))
    return levels


def step_beats_fees(low: int, high: int, maker_ppm: int) -> bool:
    """high * (1 - f)^2 > low: selling at `high` what was bought at `low` gains after both maker fees."""
    return high * (S - maker_ppm) ** 2 > low * S * S


def net_of_fee(base_units: int, rate_ppm: int) -> int:
    return base_units - fee(base_units, rate_ppm)


def grid_profit(spec: MarketSpec, buy_price: int, sell_price: int, lots: int) -> int:
    """Quote profit of buying `lots` at buy_price and selling the base received at sell_price, after
    the maker fee on both sides (see the module docstring)."""
    bpl = spec.base_units_per_lot
    net = net_of_fee(lots * bpl, spec.maker_fee_ppm)
    proceeds = net * sell_price * spec.quote_units_per_tick_lot // bpl
    return proceeds - fee(proceeds, spec.maker_fee_ppm) - spec.notional(buy_price, lots)


def validate_grid(spec: MarketSpec, p: GridParams) -> list[int]:
    """Check what does not depend on the price; returns the levels. Raises InvalidArgument."""
    if isinstance(p.intervals, bool) or not isinstance(p.intervals, int) or p.intervals < 1:
        raise InvalidArgument("intervals must be at least 1", Reason.VALUE_OUT_OF_RANGE)
    if p.intervals > MAX_GRID_INTERVALS:
        raise InvalidArgument(
            f"intervals must be at most {MAX_GRID_INTERVALS}, got {p.intervals}", Reason.VALUE_OUT_OF_RANGE
        )
    if p.spacing not in (ARITHMETIC, GEOMETRIC):
        raise InvalidArgument("spacing must be arithmetic or geometric", Reason.INVALID_FIELD)
    for name in ("lower", "upper", "trigger", "stop_loss", "take_profit", "trailing_limit"):
        value = getattr(p, name)
        if value < 0 or value > INT64_MAX:
            raise InvalidArgument(f"{name} price is out of range", Reason.VALUE_OUT_OF_RANGE)
    for name in ("invest_quote", "invest_base"):
        value = getattr(p, name)
        if value < 0 or value > INT64_MAX:
            raise InvalidArgument(f"{name} is out of range", Reason.VALUE_OUT_OF_RANGE)
    if p.lower < 1:
        raise InvalidArgument("lower price must be positive", Reason.INVALID_FIELD)
    if p.upper <= p.lower:
        raise InvalidArgument(
            f"upper price {price_text(spec, p.upper)} must be above lower price {price_text(spec, p.lower)}",
            Reason.INVALID_FIELD,
        )
    if p.stop_loss and p.take_profit and p.stop_loss >= p.take_profit:
        raise InvalidArgument(
            f"stop-loss price {price_text(spec, p.stop_loss)} must be below take-profit price "
            f"{price_text(spec, p.take_profit)}",
            Reason.INVALID_FIELD,
        )
    if p.trailing_limit and not p.trailing_up:
        raise InvalidArgument("trailing_limit needs trailing_up", Reason.INVALID_FIELD)
    if p.trailing_limit and p.trailing_limit <= p.upper:
        raise InvalidArgument(
            f"trailing limit {price_text(spec, p.trailing_limit)} must be above the upper price "
            f"{price_text(spec, p.upper)}",
            Reason.INVALID_FIELD,
        )
    levels = grid_levels(p.lower, p.upper, p.intervals, p.spacing)
    for i in range(p.intervals):
        if levels[i + 1] <= levels[i]:
            raise InvalidArgument(
                f"levels {i} and {i + 1} both round to {price_text(spec, levels[i])}: the grid is finer "
                f"than the price tick {spec.price_tick} {spec.quote.symbol}",
                Reason.PRICE_NOT_ON_TICK,
            )
    f = spec.maker_fee_ppm
    for i in range(p.intervals):
        if not step_beats_fees(levels[i], levels[i + 1], f):
            step = Fraction(levels[i + 1] - levels[i], levels[i])
            raise InvalidArgument(
                f"the step from {price_text(spec, levels[i])} to {price_text(spec, levels[i + 1])} "
                f"({decimal_string(step * 100, 4)} %) does not beat twice the maker fee "
                f"(2 x {ppm_string(f)})",
                Reason.INVALID_FIELD,
            )
    return levels


# --- the plan at a price (PreviewGrid) -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GridPlan:
    levels: tuple[int, ...]
    price: int  # the start price the plan is for
    empty: int  # index of the level left empty
    buy_levels: tuple[int, ...]
    sell_levels: tuple[int, ...]
    lots: int  # per level
    buy_quote: int  # quote locked by the initial buys
    base_lots: int  # lots bought at start (market buy)
    base_budget: int  # most that market buy may spend: its notional at the start price + the slippage
    reserve: int
    quote_needed: int  # buy_quote + base_budget + reserve (<= the investment)
    extra_base: int  # invested base the initial sells do not need (kept, not traded)
    min_lots: int
    min_investment: int  # quote needed for min_lots (with the same invested base)
    profit_min: int  # quote units per grid, over the levels
    profit_max: int
    rate_min: Fraction  # profit_i / notional(L_i, lots)
    rate_max: Fraction


def nearest_level(levels: list[int] | tuple[int, ...], price: int) -> int:
    """Index of the level nearest `price` (ties: the lower level)."""
    i = bisect_left(levels, price)
    if i == 0:
        return 0
    if i == len(levels):
        return len(levels) - 1
    return i if levels[i] - price < price - levels[i - 1] else i - 1


def lots_for_net(spec: MarketSpec, need_base: int, rate_ppm: int) -> int:
    """The fewest lots whose base net of a `rate_ppm` fee is at least `need_base` units."""
    if need_base <= 0:
        return 0
    bpl = spec.base_units_per_lot
    g = max(1, ceil_div(need_base * S, (S - rate_ppm) * bpl))
    while g > 1 and net_of_fee((g - 1) * bpl, rate_ppm) >= need_base:
        g -= 1
    while net_of_fee(g * bpl, rate_ppm) < need_base:
        g += 1
    return g


def min_grid_lots(spec: MarketSpec, levels: list[int] | tuple[int, ...]) -> tuple[int, Reason]:
    """The smallest per-level quantity whose every order meets the market minimums, and which minimum
    binds (BELOW_MIN_AMOUNT or BELOW_MIN_NOTIONAL)."""
    k = spec.quote_units_per_tick_lot
    bpl = spec.base_units_per_lot
    by_amount = spec.min_amount_lots
    by_notional = ceil_div(spec.min_notional_units, levels[0] * k)
    # the smallest counter sell (net of the maker fee) at L_1 must meet both minimums too
    sell_need = max(spec.min_amount_lots, ceil_div(spec.min_notional_units, levels[1] * k))
    by_sell = lots_for_net(spec, sell_need * bpl, spec.maker_fee_ppm)
    lots = max(by_amount, by_notional, by_sell, 1)
    sell_amount_binds = sell_need == spec.min_amount_lots
    amount_binds = lots == by_amount or (lots == by_sell and sell_amount_binds)
    return lots, Reason.BELOW_MIN_AMOUNT if amount_binds else Reason.BELOW_MIN_NOTIONAL


def plan_grid(spec: MarketSpec, p: GridParams, price: int) -> GridPlan:
    """Everything PreviewGrid shows for a start at `price`; raises InvalidArgument for a grid that
    cannot run (see validate_grid, and: insufficient investment, stop-loss/take-profit on the wrong
    side of the price)."""
    levels = validate_grid(spec, p)
    if price < 1:
        raise InvalidArgument("the start price must be positive", Reason.INVALID_FIELD)
    if p.stop_loss and p.stop_loss >= price:
        raise InvalidArgument(
            f"stop-loss price {price_text(spec, p.stop_loss)} must be below the start price "
            f"{price_text(spec, price)}",
            Reason.INVALID_FIELD,
        )
    if p.take_profit and p.take_profit <= price:
        raise InvalidArgument(
            f"take-profit price {price_text(spec, p.take_profit)} must be above the start price "
            f"{price_text(spec, price)}",
            Reason.INVALID_FIELD,
        )
    n = p.intervals
    empty = nearest_level(levels, price)
    buys = tuple(range(empty - 1, -1, -1))  # nearest first
    sells = tuple(range(empty + 1, n + 1))
    bpl = spec.base_units_per_lot
    reserve = spec.notional(levels[n], 1)
    buy_sum = sum(levels[i] for i in buys)

    def needs(lots: int) -> tuple[int, int, int, int]:
        buy_quote = spec.notional(buy_sum, lots)
        g = lots_for_net(spec, len(sells) * lots * bpl - p.invest_base, spec.taker_fee_ppm)
        budget = ceil_div(spec.notional(price, g) * (S + p.buy_slippage_ppm), S)
        return buy_quote, g, budget, buy_quote + budget + reserve

    hi = 1
    while needs(hi)[3] <= p.invest_quote and hi < INT64_MAX:
        hi *= 2
    lo = 0  # needs(lo) fits (or lo == 0)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if needs(mid)[3] <= p.invest_quote:
            lo = mid
        else:
            hi = mid
    lots = lo
    min_lots, reason = min_grid_lots(spec, levels)
    min_investment = needs(min_lots)[3]
    if lots < min_lots:
        raise InvalidArgument(
            f"investment {money(spec, p.invest_quote)} is below this grid's minimum "
            f"{money(spec, min_investment)} at {price_text(spec, price)}: every order must be at least "
            f"{spec.min_amount} {spec.base.symbol} and {spec.min_notional} {spec.quote.symbol}",
            reason,
        )
    buy_quote, g, budget, total = needs(lots)
    profits = [grid_profit(spec, levels[i], levels[i + 1], lots) for i in range(n)]
    rates = [Fraction(profits[i], spec.notional(levels[i], lots)) for i in range(n)]
    worst = min(range(n), key=lambda i: profits[i])
    if profits[worst] <= 0:
        raise InvalidArgument(
            f"a grid of {amount_text(spec, lots)} per level loses "
            f"{money(spec, -profits[worst])} between {price_text(spec, levels[worst])} and "
            f"{price_text(spec, levels[worst + 1])}: the step does not beat twice the maker fee "
            f"(2 x {ppm_string(spec.maker_fee_ppm)}) after rounding",
            Reason.INVALID_FIELD,
        )
    extra_base = max(0, p.invest_base - len(sells) * lots * bpl)
    return GridPlan(
        levels=tuple(levels),
        price=price,
        empty=empty,
        buy_levels=buys,
        sell_levels=sells,
        lots=lots,
        buy_quote=buy_quote,
        base_lots=g,
        base_budget=budget,
        reserve=reserve,
        quote_needed=total,
        extra_base=extra_base,
        min_lots=min_lots,
        min_investment=min_investment,
        profit_min=min(profits),
        profit_max=max(profits),
        rate_min=min(rates),
        rate_max=max(rates),
    )


def preview_fields(spec: MarketSpec, plan: GridPlan) -> dict[str, Any]:
    """The plan as the API shows it: decimal strings (prices and amounts in the market's units)."""
    return {
        "levels": [spec.format_price(x) for x in plan.levels],
        "start_price": spec.format_price(plan.price),
        "empty_level": plan.empty,
        "buy_orders": len(plan.buy_levels),
        "sell_orders": len(plan.sell_levels),
        "amount_per_level": spec.format_amount(plan.lots),
        "initial_buy_amount": spec.format_amount(plan.base_lots),
        "initial_buy_quote": spec.format_quote(plan.base_budget),
        "quote_in_buy_orders": spec.format_quote(plan.buy_quote),
        "reserve": spec.format_quote(plan.reserve),
        "quote_needed": spec.format_quote(plan.quote_needed),
        "min_investment": spec.format_quote(plan.min_investment),
        "profit_per_grid_min": spec.format_quote(plan.profit_min),
        "profit_per_grid_max": spec.format_quote(plan.profit_max),
        "profit_rate_min": decimal_string(plan.rate_min, 6),
        "profit_rate_max": decimal_string(plan.rate_max, 6),
        "quote_asset": spec.quote.symbol,
        "base_asset": spec.base.symbol,
    }


# --- the state machine -------------------------------------------------------------------------

BUY_TAG: Final = "b"
SELL_TAG: Final = "s"
INITIAL_TAG: Final = "i"


class GridStrategy(Strategy):
    KIND = "grid"

    def __init__(self, spec: MarketSpec, strategy_id: int, params: GridParams) -> None:
        super().__init__(spec, strategy_id)
        self.params = params
        self._levels = validate_grid(spec, params)
        self._prices: dict[int, int] = dict(enumerate(self._levels))
        self.offset = 0  # levels the range moved up (trailing)
        self.lots = 0  # per level, set at start
        self.level_lots: dict[int, int] = {}  # levels trading another quantity (added by trailing)
        self.dust = 0  # base units to add to the next counter sell
        self.extra_base = 0  # invested base the grid does not trade
        self.trigger_dir = 0  # +1: wait for price >= trigger, -1: price <= trigger
        self.start_price = 0
        self.empty0 = -1
        self.trail_pending = ""  # cid of the bottom buy canceled for a trailing shift
        self.trailing_stopped = ""
        self.account.deposit(params.invest_base, params.invest_quote)

    # --- levels --------------------------------------------------------------------------------

    def price_at(self, i: int) -> int:
        """Price of level i >= 0 (levels above the top are computed once, upwards, and cached)."""
        prices = self._prices
        price = prices.get(i)
        if price is not None:
            return price
        p = self.params
        j = max(prices)
        while j < i:
            j += 1
            guess = prices[j - 1]
            if p.spacing == GEOMETRIC:
                guess = guess * guess // prices[j - 2]
            prices[j] = level_price(p.lower, p.upper, p.intervals, p.spacing, j, guess)
        return prices[i]

    @property
    def bottom(self) -> int:
        return self.offset

    @property
    def top(self) -> int:
        return self.params.intervals + self.offset

    def qty(self, level: int) -> int:
        return self.level_lots.get(level, self.lots)

    def order_at(self, level: int) -> Order | None:
        for o in self.orders.values():
            if o.level == level and (o.tag == BUY_TAG or o.tag == SELL_TAG):
                return o
        return None

    # --- events --------------------------------------------------------------------------------

    def _on_tick(self, price: int) -> None:
        p = self.params
        status = self.status
        if status == NEW:
            if p.trigger and price != p.trigger:
                self.trigger_dir = 1 if price < p.trigger else -1
                self.status = WAITING
                return
            self._start(price)
        elif status == WAITING:
            if (price >= p.trigger) if self.trigger_dir > 0 else (price <= p.trigger):
                self._start(price)
        elif status == RUNNING:
            if p.stop_loss and price <= p.stop_loss:
                self._begin_stop(STOP_CANCEL_AND_SELL if p.sell_on_stop else STOP_CANCEL_ORDERS, "stop_loss")
            elif p.take_profit and price >= p.take_profit:
                self._begin_stop(
                    STOP_CANCEL_AND_SELL if p.sell_on_stop else STOP_CANCEL_ORDERS, "take_profit"
                )
            elif p.trailing_up:
                self._maybe_trail(price)

    def _start(self, price: int) -> None:
        try:
            plan = plan_grid(self.spec, self.params, price)
        except InvalidArgument as exc:
            self.status = FAILED
            self.failure = exc.message
            return
        self.status = RUNNING
        self.start_price = price
        self.lots = plan.lots
        self.empty0 = plan.empty
        self.extra_base = plan.extra_base
        for i in plan.buy_levels:
            self._place(BUY, self.price_at(i), self.lots, BUY_TAG, i, label=f"b{i}")
        if plan.base_lots:
            # buy the base the sells need by amount, not by its value at the start price (the last
            # trade may have been at the bid, below the asks it buys from): base_lots, spending at most
            # the budget (start price + slippage); what it does not spend stays free
            self._place(BUY, 0, plan.base_lots, INITIAL_TAG, 0, budget=plan.base_budget)
        else:
            self._place_initial_sells()

    def _place_initial_sells(self) -> None:
        bpl = self.spec.base_units_per_lot
        for i in range(self.empty0 + 1, self.top + 1):
            if self.free_base() - self.extra_base >= self.lots * bpl:
                self._place(SELL, self.price_at(i), self.lots, SELL_TAG, i, label=f"s{i}")
            else:
                self.skipped_orders += 1
        self.dust = max(0, self.free_base() - self.extra_base)

    def _on_fill(self, order: Order, fill: Fill, removed_cost: int) -> None:
        if order.tag != SELL_TAG:
            return
        spec = self.spec
        basis = order.level - 1
        lots = self.qty(basis)
        bpl = spec.base_units_per_lot
        net = net_of_fee(lots * bpl, spec.maker_fee_ppm)
        cost = ceil_div(spec.notional(self.price_at(basis), lots) * fill.base_units, net)
        self.account.realized += fill.quote_units - fill.fee - cost

    def _on_complete(self, order: Order, reason: int) -> None:
        tag = order.tag
        spec = self.spec
        bpl = spec.base_units_per_lot
        if tag == INITIAL_TAG:
            if self.status == RUNNING:
                self._place_initial_sells()
        elif tag == BUY_TAG:
            received = order.filled_base - order.fee
            if reason == DONE_FILLED:
                if order.cid == self.trail_pending:
                    self.trail_pending = ""  # filled before the cancel: no shift
                total = received + self.dust
                self.dust = total
                if self.status == RUNNING:
                    j = order.level + 1
                    lots = total // bpl
                    if (
                        j <= self.top
                        and self.order_at(j) is None
                        and self._place(SELL, self.price_at(j), lots, SELL_TAG, j, label=f"s{j}") is not None
                    ):
                        self.dust = total - lots * bpl
            else:
                self.dust += received
                if order.cid == self.trail_pending:
                    self.trail_pending = ""
                    if self.status == RUNNING:
                        self._shift(spec.notional(order.price, order.lots - order.filled))
        elif tag == SELL_TAG:
            if reason == DONE_FILLED:
                self.account.pairs += 1
                j = order.level - 1
                if self.status == RUNNING and j >= self.bottom and self.order_at(j) is None:
                    price = self.price_at(j)
                    lots = min(self.qty(j), self.free_quote() // spec.notional(price, 1))
                    self._place(BUY, price, lots, BUY_TAG, j, label=f"b{j}")
            else:
                self.dust += order.remaining * bpl
        if self.status == STOPPING:
            self._continue_stop()

    # --- trailing up ---------------------------------------------------------------------------

    def _trail_threshold(self) -> int:
        nxt = self.price_at(self.top + 1)
        limit = self.params.trailing_limit
        return NEVER if limit and nxt > limit else nxt

    def _maybe_trail(self, price: int) -> None:
        if self.trailing_stopped or self.trail_pending:
            return
        if price < self._trail_threshold():
            return
        if any(o.tag == SELL_TAG for o in self.orders.values()):
            return  # every sell must have filled first
        lowest = self.order_at(self.bottom)
        if lowest is not None and lowest.side == BUY:
            self.trail_pending = lowest.cid
            self._cancel(lowest)
        elif lowest is None:
            self._shift(
                min(self.free_quote(), self.spec.notional(self.price_at(self.bottom), self.qty(self.bottom)))
            )

    def _shift(self, quote: int) -> None:
        """Move the range up one level and put a buy of `quote` at the old top."""
        spec = self.spec
        new_level = self.top
        self.offset += 1
        for level in [lv for lv in self.level_lots if lv < self.offset - 1]:
            del self.level_lots[level]
        price = self.price_at(new_level)
        lots = quote // spec.notional(price, 1)
        self.level_lots[new_level] = lots
        placed = None
        if self.order_at(new_level) is None:
            placed = self._place(BUY, price, lots, BUY_TAG, new_level, label=f"b{new_level}")
        if placed is None:
            self.trailing_stopped = (
                f"a buy of {money(spec, quote)} at {price_text(spec, price)} would break the market's "
                f"minimums (or the funds ran short): trailing stopped"
            )

    # --- what a driver asks --------------------------------------------------------------------

    def band(self) -> tuple[int, int]:
        p = self.params
        status = self.status
        if status == NEW:
            return (0, 0)
        if status == WAITING:
            return (0, p.trigger) if self.trigger_dir > 0 else (p.trigger, NEVER)
        if status != RUNNING:
            return (0, NEVER)
        hi = p.take_profit or NEVER
        if p.trailing_up and not self.trailing_stopped and not self.trail_pending:
            hi = min(hi, self._trail_threshold())
        return (p.stop_loss, hi)

    # --- snapshot ------------------------------------------------------------------------------

    def _params_dict(self) -> dict[str, Any]:
        return self.params.to_dict()

    def _extra_snapshot(self) -> dict[str, Any]:
        return {
            "offset": self.offset,
            "lots": self.lots,
            "level_lots": {str(k): v for k, v in sorted(self.level_lots.items())},
            "dust": self.dust,
            "extra_base": self.extra_base,
            "trigger_dir": self.trigger_dir,
            "start_price": self.start_price,
            "empty0": self.empty0,
            "trail_pending": self.trail_pending,
            "trailing_stopped": self.trailing_stopped,
        }

    def _extra_restore(self, data: dict[str, Any]) -> None:
        self.offset = int(data["offset"])
        self.lots = int(data["lots"])
        self.level_lots = {int(k): int(v) for k, v in data["level_lots"].items()}
        self.dust = int(data["dust"])
        self.extra_base = int(data["extra_base"])
        self.trigger_dir = int(data["trigger_dir"])
        self.start_price = int(data["start_price"])
        self.empty0 = int(data["empty0"])
        self.trail_pending = str(data["trail_pending"])
        self.trailing_stopped = str(data["trailing_stopped"])

    @classmethod
    def restore(cls, spec: MarketSpec, data: dict[str, Any]) -> GridStrategy:
        g = cls(spec, int(data["strategy_id"]), GridParams.from_dict(data["params"]))
        g._restore_common(data)
        return g

    def report_extra(self) -> dict[str, Any]:
        return {
            "range": [self.price_at(self.bottom), self.price_at(self.top)],
            "lots_per_level": self.lots,
            "offset": self.offset,
            "dust_base": self.dust,
            "trailing_stopped": self.trailing_stopped,
        }

"""What every quantizer strategy shares: the events it consumes, the intents it produces, the client
order id scheme, its own view of its orders and of its money, and the state-machine base class.

A strategy is a deterministic state machine. `Strategy.apply(event)` takes one event and returns the
order intents it decided on; nothing inside reads a clock, draws random numbers or does I/O, so the same
events give the same intents and the same state. Its whole state is plain data (`snapshot()` gives ints,
strings, bools, lists and str-keyed dicts; `restore()` rebuilds an equal strategy) so a service can
persist it and resume after a crash, and a backtest can run it against recorded trades.

Events in (all times in microseconds, prices in ticks, amounts in lots, money in asset units):
- `Fill`: a trade of one of the strategy's orders. The fee is in the asset received (base for a buy,
  quote for a sell), as the matching engine charges it. A fill whose trade id was already applied is
  ignored (`FillGuard`), so a replayed or duplicated fill never counts twice.
- `Done`: one of its orders left the book (filled, canceled, expired or rejected; codes of
  services.matching.model).
- `Tick`: the last trade price of the market, with its time.
- `Timer`: a time signal (recurring buys and cooldowns need one even when nothing trades).
- `Funds`: base/quote moved into the strategy's sub-account.
- `Stop`: the user stops the strategy (keep orders, cancel them, or cancel and sell the base).

Intents out: `Place` (a limit order, a market buy spending a quote budget, or a market sell) with a
deterministic client order id, and `Cancel` (by that client order id).

Client order ids: ``q{strategy_id}-{seq}-{tag}``: `seq` counts the strategy's placements from 1 (it is
part of the state, so an id is never reused, even across restarts), `tag` says what the order is for
(grid: ``b7``/``s7`` = buy/sell at level 7, ``i`` = the initial base purchase, ``x`` = the stop sell;
DCA: ``d3b`` = base order of deal 3, ``d3s2`` = its safety order 2, ``d3t`` = its take profit, ``d3x`` = its
exit sell; recurring buys: ``r12`` = run 12). Only ``[A-Za-z0-9-]`` is used, and an id is never longer
than 64 characters (the accounts service's rule), so the service can send it as the order's
client_order_id: a retried placement is then recognised by the exchange instead of doubling the order,
and reconciliation after a restart matches open orders to the strategy's table by id.

The strategy keeps its money in `Account`: what it holds (base and quote, in units), what it paid in
fees per asset, what was invested, the average-cost basis of the base it holds, and the realized profit
its own rules attribute. Open orders lock part of it (`Strategy.free_quote()`/`free_base()`); a strategy
never places an order its free funds do not cover, so neither balance can go negative.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, ClassVar, Final

from services.common.errors import InvalidArgument, Reason
from services.common.markets import FEE_SCALE, MarketSpec
from services.common.units import INT64_MAX
from services.matching.model import BUY, DONE_CANCELED, DONE_EXPIRED, DONE_FILLED, DONE_REJECTED, SELL

S: Final = FEE_SCALE  # ppm scale of fee rates and of every ratio parameter (1_000_000 = 1)
MAX_CLIENT_ID: Final = 64
FILL_WINDOW: Final = 4096  # trade ids remembered individually (older ones: below the floor)

# Stop modes (the numbers of exchange.v1.StopMode)
STOP_KEEP_ORDERS: Final = 1
STOP_CANCEL_ORDERS: Final = 2
STOP_CANCEL_AND_SELL: Final = 3

DONE_NAMES: Final = {
    DONE_FILLED: "filled",
    DONE_CANCELED: "canceled",
    DONE_EXPIRED: "expired",
    DONE_REJECTED: "rejected",
}

# Strategy status (strings in snapshots; the service maps them to exchange.v1.StrategyState).
NEW: Final = "new"  # created, no price seen yet
WAITING: Final = "waiting"  # waiting for the trigger price
RUNNING: Final = "running"
STOPPING: Final = "stopping"  # canceling its orders (and then selling) before it stops
STOPPED: Final = "stopped"
FAILED: Final = "failed"


# --- events in ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Fill:
    cid: str
    trade_id: int
    side: int  # the side of the strategy's order
    price: int
    lots: int
    quote_units: int
    base_units: int
    fee: int  # in the asset received: base for a buy, quote for a sell
    time: int
    maker: bool = True


@dataclass(frozen=True, slots=True)
class Done:
    cid: str
    reason: int  # DONE_FILLED / DONE_CANCELED / DONE_EXPIRED / DONE_REJECTED
    time: int


@dataclass(frozen=True, slots=True)
class Tick:
    price: int
    time: int


@dataclass(frozen=True, slots=True)
class Timer:
    time: int


@dataclass(frozen=True, slots=True)
class Funds:
    base: int
    quote: int
    time: int


@dataclass(frozen=True, slots=True)
class Stop:
    mode: int
    time: int


Event = Fill | Done | Tick | Timer | Funds | Stop


# --- intents out -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Place:
    """A limit order (price > 0, lots > 0), a market buy (price 0, quote_budget > 0: spend the budget,
    or with lots > 0 too: buy up to `lots`, spending at most the budget) or a market sell (price 0,
    lots > 0)."""

    cid: str
    side: int
    price: int
    lots: int
    quote_budget: int = 0

    @property
    def is_market(self) -> bool:
        return self.price == 0


@dataclass(frozen=True, slots=True)
class Cancel:
    cid: str


Intent = Place | Cancel


def client_order_id(strategy_id: int, seq: int, tag: str) -> str:
    cid = f"q{strategy_id}-{seq}-{tag}"
    return cid if len(cid) <= MAX_CLIENT_ID else f"q{strategy_id}-{seq}"


# --- small exact helpers -----------------------------------------------------------------------


def ceil_div(a: int, b: int) -> int:
    return -((-a) // b)


def round_half_up(x: Fraction) -> int:
    """The nearest integer, halves away from zero."""
    n, d = x.numerator, x.denominator
    if n >= 0:
        return (2 * n + d) // (2 * d)
    return -((-2 * n + d) // (2 * d))


def decimal_string(x: Fraction, places: int) -> str:
    """`x` as a plain decimal with `places` decimals, rounded half away from zero ("-0.125")."""
    scaled = round_half_up(x * 10**places)
    sign = "-" if scaled < 0 else ""
    scaled = abs(scaled)
    if places == 0:
        return f"{sign}{scaled}"
    whole, frac = divmod(scaled, 10**places)
    return f"{sign}{whole}.{str(frac).rjust(places, '0')}"


def ppm_string(ppm: int) -> str:
    """A ppm ratio as a percentage for messages ("0.1 %")."""
    text = decimal_string(Fraction(ppm, 10_000), 4).rstrip("0").rstrip(".")
    return f"{text} %"


def money(spec: MarketSpec, units: int, asset: str = "quote") -> str:
    if asset == "base":
        return f"{spec.format_base(units)} {spec.base.symbol}"
    return f"{spec.format_quote(units)} {spec.quote.symbol}"


def price_text(spec: MarketSpec, ticks: int) -> str:
    return f"{spec.format_price(ticks)} {spec.quote.symbol}"


def amount_text(spec: MarketSpec, lots: int) -> str:
    return f"{spec.format_amount(lots)} {spec.base.symbol}"


def value_of_base(spec: MarketSpec, base_units: int, price: int) -> int:
    """Quote units that `base_units` are worth at `price` ticks (rounded down)."""
    return base_units * price * spec.quote_units_per_tick_lot // spec.base_units_per_lot


def order_problem(spec: MarketSpec, place: Place) -> tuple[str, Reason] | None:
    """Why the accounts service would refuse this order (its placement rules), or None."""
    if place.side not in (BUY, SELL):
        return "side must be buy or sell", Reason.INVALID_ORDER
    if place.price < 0 or place.lots < 0 or place.quote_budget < 0:
        return "negative price or amount", Reason.INVALID_ORDER
    if place.price > 0:
        if place.quote_budget:
            return "a limit order has no quote budget", Reason.INVALID_ORDER
        if place.lots < spec.min_amount_lots:
            return (
                f"amount {amount_text(spec, place.lots)} is below the minimum "
                f"{spec.min_amount} {spec.base.symbol}",
                Reason.BELOW_MIN_AMOUNT,
            )
        notional = spec.notional(place.price, place.lots)
        if notional > INT64_MAX:
            return f"order value {money(spec, notional)} is too large", Reason.VALUE_TOO_LARGE
        if notional < spec.min_notional_units:
            return (
                f"order value {money(spec, notional)} is below the minimum "
                f"{spec.min_notional} {spec.quote.symbol}",
                Reason.BELOW_MIN_NOTIONAL,
            )
        return None
    if place.side == BUY:
        if place.lots and place.lots < spec.min_amount_lots:
            return (
                f"amount {amount_text(spec, place.lots)} is below the minimum {spec.min_amount} "
                f"{spec.base.symbol}",
                Reason.BELOW_MIN_AMOUNT,
            )
        minimum = max(1, spec.min_notional_units)
        if place.quote_budget < minimum:
            return (
                f"quote budget {money(spec, place.quote_budget)} is below the minimum {money(spec, minimum)}",
                Reason.BELOW_MIN_NOTIONAL,
            )
        return None
    if place.quote_budget:
        return "a market sell gives an amount, not a quote budget", Reason.INVALID_ORDER
    if place.lots < spec.min_amount_lots:
        return (
            f"amount {amount_text(spec, place.lots)} is below the minimum {spec.min_amount} "
            f"{spec.base.symbol}",
            Reason.BELOW_MIN_AMOUNT,
        )
    return None


def check_order(spec: MarketSpec, place: Place, what: str) -> None:
    """Raise InvalidArgument (with the accounts service's reason) for an order it would refuse."""
    problem = order_problem(spec, place)
    if problem is not None:
        message, reason = problem
        raise InvalidArgument(f"{what}: {message}", reason)


def check_ppm(value: int, name: str, *, low: int = 0, high: int = S - 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidArgument(
            f"{name} must be in {ppm_string(low)}..{ppm_string(high)}", Reason.VALUE_OUT_OF_RANGE
        )
    return value


def check_count(value: int, name: str, *, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidArgument(f"{name} must be in {low}..{high}", Reason.VALUE_OUT_OF_RANGE)
    return value


# --- the strategy's own books ------------------------------------------------------------------


class FillGuard:
    """Trade ids already applied. Trade ids of one market only grow, so the guard remembers the last
    FILL_WINDOW ids one by one and everything at or below `floor` as seen: a repeated fill is ignored
    whether it comes straight back or after a restart's replay."""

    __slots__ = ("floor", "seen")

    def __init__(self) -> None:
        self.floor = 0
        self.seen: set[int] = set()

    def admit(self, trade_id: int) -> bool:
        if trade_id <= self.floor or trade_id in self.seen:
            return False
        self.seen.add(trade_id)
        if len(self.seen) > 2 * FILL_WINDOW:
            ids = sorted(self.seen)
            self.floor = ids[-FILL_WINDOW - 1]
            self.seen = set(ids[-FILL_WINDOW:])
        return True

    def snapshot(self) -> dict[str, Any]:
        return {"floor": self.floor, "seen": sorted(self.seen)}

    @staticmethod
    def restore(data: dict[str, Any]) -> FillGuard:
        g = FillGuard()
        g.floor = int(data["floor"])
        g.seen = {int(t) for t in data["seen"]}
        return g


class Order:
    """The strategy's view of one of its orders (placed, not yet done)."""

    __slots__ = (
        "budget",
        "canceling",
        "cid",
        "fee",
        "filled",
        "filled_base",
        "filled_quote",
        "level",
        "lots",
        "price",
        "side",
        "tag",
    )

    FIELDS: ClassVar[tuple[str, ...]] = (
        "cid",
        "side",
        "price",
        "lots",
        "budget",
        "tag",
        "level",
        "filled",
        "filled_quote",
        "filled_base",
        "fee",
        "canceling",
    )

    def __init__(self, cid: str, side: int, price: int, lots: int, budget: int, tag: str, level: int) -> None:
        self.cid = cid
        self.side = side
        self.price = price  # 0 for a market order
        self.lots = lots  # 0 for a market buy
        self.budget = budget  # quote budget of a market buy
        self.tag = tag  # what the order is for (the strategy's own codes)
        self.level = level  # grid level / DCA safety order number / recurring run (else 0)
        self.filled = 0  # lots
        self.filled_quote = 0
        self.filled_base = 0  # base units traded (gross)
        self.fee = 0  # in the asset received
        self.canceling = False

    @property
    def remaining(self) -> int:
        return self.lots - self.filled

    def locked_quote(self, spec: MarketSpec) -> int:
        if self.side != BUY:
            return 0
        if self.price == 0:
            return self.budget - self.filled_quote
        return spec.notional(self.price, self.lots - self.filled)

    def locked_base(self, spec: MarketSpec) -> int:
        return (self.lots - self.filled) * spec.base_units_per_lot if self.side == SELL else 0

    def to_list(self) -> list[Any]:
        return [getattr(self, name) for name in self.FIELDS]

    @classmethod
    def from_list(cls, row: list[Any]) -> Order:
        o = cls(str(row[0]), int(row[1]), int(row[2]), int(row[3]), int(row[4]), str(row[5]), int(row[6]))
        o.filled, o.filled_quote, o.filled_base, o.fee = (int(v) for v in row[7:11])
        o.canceling = bool(row[11])
        return o

    def __repr__(self) -> str:
        side = "BUY" if self.side == BUY else "SELL"
        return f"Order({self.cid} {side} {self.filled}/{self.lots}@{self.price})"


class Account:
    """The strategy's money, in asset units.

    `cost` is the average-cost basis of the base held: a buy adds its quote, a sell removes the sold
    share of it (rounded down). `realized` and `pairs` are written by the strategy's own profit rules
    (grid: per matched pair; DCA: per deal). `invest_value` is what was invested, valued in quote when
    it came in (base at the first price the strategy sees).
    """

    FIELDS: ClassVar[tuple[str, ...]] = (
        "base",
        "quote",
        "fees_base",
        "fees_quote",
        "bought_base",
        "spent_quote",
        "sold_base",
        "received_quote",
        "cost",
        "realized",
        "pairs",
        "fills",
        "orders_placed",
        "invested_base",
        "invested_quote",
        "invest_value",
        "unvalued_base",
        "start_time",
    )

    __slots__ = FIELDS

    def __init__(self) -> None:
        self.base = 0
        self.quote = 0
        self.fees_base = 0
        self.fees_quote = 0
        self.bought_base = 0  # net of fees
        self.spent_quote = 0
        self.sold_base = 0
        self.received_quote = 0  # net of fees
        self.cost = 0
        self.realized = 0
        self.pairs = 0
        self.fills = 0
        self.orders_placed = 0
        self.invested_base = 0
        self.invested_quote = 0
        self.invest_value = 0
        self.unvalued_base = 0  # invested base not valued yet (no price seen)
        self.start_time = -1  # first price (or timer) seen: the start of the annualized return

    def deposit(self, base: int, quote: int) -> None:
        self.base += base
        self.quote += quote
        self.invested_base += base
        self.invested_quote += quote
        self.invest_value += quote
        self.unvalued_base += base
        # Deposited base enters the cost basis at its value when it is valued (see value_pending).

    def value_pending(self, spec: MarketSpec, price: int, time: int) -> None:
        if self.start_time < 0:
            self.start_time = time
        if self.unvalued_base:
            worth = value_of_base(spec, self.unvalued_base, price)
            self.invest_value += worth
            self.cost += worth
            self.unvalued_base = 0

    def buy(self, quote_units: int, base_units: int, fee_units: int) -> None:
        self.quote -= quote_units
        self.base += base_units - fee_units
        self.fees_base += fee_units
        self.bought_base += base_units - fee_units
        self.spent_quote += quote_units
        self.cost += quote_units
        self.fills += 1

    def sell(self, quote_units: int, base_units: int, fee_units: int) -> int:
        """Book a sell; returns the cost basis of the base sold."""
        removed = self.cost * base_units // self.base if self.base > 0 else 0
        self.cost -= removed
        self.base -= base_units
        self.quote += quote_units - fee_units
        self.fees_quote += fee_units
        self.sold_base += base_units
        self.received_quote += quote_units - fee_units
        self.fills += 1
        return removed

    def to_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in self.FIELDS}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Account:
        a = cls()
        for name in cls.FIELDS:
            setattr(a, name, int(data[name]))
        return a


# --- the base class ----------------------------------------------------------------------------

NEVER: Final = 1 << 62  # a price no tick reaches


class Strategy:
    """Base of the grid, DCA and recurring-buy state machines.

    Subclasses implement the hooks `_on_tick`, `_on_timer`, `_on_fill`, `_on_complete` (an order is
    done: fully filled, canceled, expired or rejected), `_on_stop`, and `_extra_snapshot`/`_extra_restore`
    for their own state. `apply` does the bookkeeping every strategy shares (fill dedupe, the account,
    the order table) before calling them.
    """

    KIND: ClassVar[str] = ""

    def __init__(self, spec: MarketSpec, strategy_id: int) -> None:
        if isinstance(strategy_id, bool) or not isinstance(strategy_id, int) or strategy_id < 1:
            raise InvalidArgument("strategy_id must be positive", Reason.VALUE_OUT_OF_RANGE)
        self.spec = spec
        self.strategy_id = strategy_id
        self.status = NEW
        self.failure = ""
        self.stop_reason = ""
        self.seq = 0
        self.orders: dict[str, Order] = {}
        self.guard = FillGuard()
        self.account = Account()
        self.last_price = 0
        self.last_time = 0
        self.duplicate_fills = 0
        self.unknown_fills = 0
        self.rejected_orders = 0
        self.skipped_orders = 0  # orders the strategy wanted but could not afford or that broke a rule
        self._stop_sell = False
        self._out: list[Intent] = []

    # --- the state machine ---------------------------------------------------------------------

    def apply(self, event: Event) -> list[Intent]:
        self._out = []
        t = type(event)
        if t is Fill:
            self._fill(event)  # type: ignore[arg-type]
        elif t is Done:
            self._done(event)  # type: ignore[arg-type]
        elif t is Tick:
            ev: Tick = event  # type: ignore[assignment]
            if ev.time > self.last_time:
                self.last_time = ev.time
            self.last_price = ev.price
            self.account.value_pending(self.spec, ev.price, self.last_time)
            if self.status not in (STOPPED, FAILED):
                self._on_tick(ev.price)
        elif t is Timer:
            tm: Timer = event  # type: ignore[assignment]
            if tm.time > self.last_time:
                self.last_time = tm.time
            if self.account.start_time < 0:
                self.account.start_time = self.last_time
            if self.status not in (STOPPED, FAILED):
                self._on_timer()
        elif t is Funds:
            fu: Funds = event  # type: ignore[assignment]
            if fu.base < 0 or fu.quote < 0:
                raise InvalidArgument("funds must not be negative", Reason.VALUE_OUT_OF_RANGE)
            if fu.time > self.last_time:
                self.last_time = fu.time
            self.account.deposit(fu.base, fu.quote)
            if self.last_price:
                self.account.value_pending(self.spec, self.last_price, self.last_time)
            if self.status not in (STOPPED, FAILED):
                self._on_funds()
        elif t is Stop:
            st: Stop = event  # type: ignore[assignment]
            if st.mode not in (STOP_KEEP_ORDERS, STOP_CANCEL_ORDERS, STOP_CANCEL_AND_SELL):
                raise InvalidArgument("unknown stop mode", Reason.INVALID_FIELD)
            if st.time > self.last_time:
                self.last_time = st.time
            if self.status not in (STOPPED, FAILED):
                self._begin_stop(st.mode, "user")
            elif self.status == STOPPED and self.orders and st.mode != STOP_KEEP_ORDERS:
                # stopped with its orders kept: this stop cancels them (and sells, for mode 3)
                self._begin_stop(st.mode, self.stop_reason or "user")
        else:
            raise TypeError(f"not a strategy event: {event!r}")
        out = self._out
        self._out = []
        return out

    def _fill(self, f: Fill) -> None:
        if f.time > self.last_time:
            self.last_time = f.time
        if not self.guard.admit(f.trade_id):
            self.duplicate_fills += 1
            return
        acct = self.account
        order = self.orders.get(f.cid)
        removed = 0
        if f.side == BUY:
            acct.buy(f.quote_units, f.base_units, f.fee)
        else:
            removed = acct.sell(f.quote_units, f.base_units, f.fee)
        if order is None:
            self.unknown_fills += 1
            return
        order.filled += f.lots
        order.filled_quote += f.quote_units
        order.filled_base += f.base_units
        order.fee += f.fee
        self._on_fill(order, f, removed)
        if order.price and order.filled >= order.lots and f.cid in self.orders:
            del self.orders[f.cid]
            self._on_complete(order, DONE_FILLED)

    def _done(self, d: Done) -> None:
        if d.time > self.last_time:
            self.last_time = d.time
        order = self.orders.pop(d.cid, None)
        if order is None:
            return  # already completed by its last fill, or not ours
        if d.reason == DONE_REJECTED:
            self.rejected_orders += 1
        self._on_complete(order, d.reason)

    # --- placing -------------------------------------------------------------------------------

    def _next_cid(self, tag: str) -> str:
        self.seq += 1
        return client_order_id(self.strategy_id, self.seq, tag)

    def free_quote(self) -> int:
        spec = self.spec
        return self.account.quote - sum(o.locked_quote(spec) for o in self.orders.values())

    def free_base(self) -> int:
        spec = self.spec
        return self.account.base - sum(o.locked_base(spec) for o in self.orders.values())

    def _place(
        self, side: int, price: int, lots: int, kind: str, level: int = 0, budget: int = 0, label: str = ""
    ) -> Order | None:
        """Emit a placement if it is valid and funded; otherwise count it as skipped. `kind` is what
        the order is for (kept in the Order), `label` the tag of its client order id (default: kind)."""
        place = Place("", side, price, lots, budget)
        if order_problem(self.spec, place) is not None:
            self.skipped_orders += 1
            return None
        if side == BUY:
            need = budget if price == 0 else self.spec.notional(price, lots)
            if need > self.free_quote():
                self.skipped_orders += 1
                return None
        elif lots * self.spec.base_units_per_lot > self.free_base():
            self.skipped_orders += 1
            return None
        cid = self._next_cid(label or kind)
        order = Order(cid, side, price, lots, budget, kind, level)
        self.orders[cid] = order
        self.account.orders_placed += 1
        self._out.append(Place(cid, side, price, lots, budget))
        return order

    def _cancel(self, order: Order) -> None:
        if not order.canceling:
            order.canceling = True
            self._out.append(Cancel(order.cid))

    def _cancel_all(self, orders: Iterable[Order] | None = None) -> None:
        for order in sorted(self.orders.values() if orders is None else orders, key=lambda o: o.cid):
            self._cancel(order)

    def _sell_all_base(self, kind: str, label: str = "") -> Order | None:
        lots = self.free_base() // self.spec.base_units_per_lot
        if lots < self.spec.min_amount_lots:
            return None
        return self._place(SELL, 0, lots, kind, label=label)

    # --- stopping ------------------------------------------------------------------------------

    def _begin_stop(self, mode: int, reason: str) -> None:
        """Stop: keep the orders (they are no longer managed), or cancel them and then (mode 3) sell
        the base at market. Subclasses may extend (`_on_stop`)."""
        self.stop_reason = reason
        self._on_stop(mode)
        if mode == STOP_KEEP_ORDERS:
            self.status = STOPPED
            return
        self.status = STOPPING
        self._stop_sell = mode == STOP_CANCEL_AND_SELL
        self._cancel_all()
        self._continue_stop()

    def _continue_stop(self) -> None:
        """Called while stopping after each order is done: once nothing is open, sell (if asked), and
        when that sell is done too, the strategy is stopped."""
        if self.orders:
            return
        if self._stop_sell:
            self._stop_sell = False
            kind, label = self._stop_tag()
            if self._sell_all_base(kind, label) is not None:
                return
        self.status = STOPPED

    def _stop_tag(self) -> tuple[str, str]:
        """(kind, client order id tag) of the stop's market sell."""
        return "x", "x"

    # --- hooks ---------------------------------------------------------------------------------

    def _on_tick(self, price: int) -> None:
        pass

    def _on_timer(self) -> None:
        pass

    def _on_funds(self) -> None:
        pass

    def _on_fill(self, order: Order, fill: Fill, removed_cost: int) -> None:
        pass

    def _on_complete(self, order: Order, reason: int) -> None:
        if self.status == STOPPING:
            self._continue_stop()

    def _on_stop(self, mode: int) -> None:
        pass

    # --- what a driver asks --------------------------------------------------------------------

    def wakeup(self) -> int | None:
        """The next time the strategy wants a Timer even if nothing trades (None: no timer)."""
        return None

    def band(self) -> tuple[int, int]:
        """(lo, hi): a Tick with lo < price < hi before wakeup() changes nothing but the last price,
        so a driver may skip it. (0, 0) means every tick matters."""
        return (0, 0)

    def open_orders(self) -> list[Order]:
        return sorted(self.orders.values(), key=lambda o: o.cid)

    # --- snapshot ------------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        return {
            "kind": self.KIND,
            "market": self.spec.symbol,
            "strategy_id": self.strategy_id,
            "status": self.status,
            "failure": self.failure,
            "stop_reason": self.stop_reason,
            "stop_sell": self._stop_sell,
            "seq": self.seq,
            "orders": [o.to_list() for o in self.open_orders()],
            "guard": self.guard.snapshot(),
            "account": self.account.to_dict(),
            "last_price": self.last_price,
            "last_time": self.last_time,
            "counters": {
                "duplicate_fills": self.duplicate_fills,
                "unknown_fills": self.unknown_fills,
                "rejected_orders": self.rejected_orders,
                "skipped_orders": self.skipped_orders,
            },
            "params": self._params_dict(),
            "state": self._extra_snapshot(),
        }

    def _restore_common(self, data: dict[str, Any]) -> None:
        if data.get("kind") != self.KIND or data.get("market") != self.spec.symbol:
            raise ValueError(f"snapshot is not a {self.KIND} strategy of {self.spec.symbol}")
        self.status = str(data["status"])
        self.failure = str(data["failure"])
        self.stop_reason = str(data["stop_reason"])
        self._stop_sell = bool(data["stop_sell"])
        self.seq = int(data["seq"])
        self.orders = {}
        for row in data["orders"]:
            o = Order.from_list(list(row))
            self.orders[o.cid] = o
        self.guard = FillGuard.restore(data["guard"])
        self.account = Account.from_dict(data["account"])
        self.last_price = int(data["last_price"])
        self.last_time = int(data["last_time"])
        c = data["counters"]
        self.duplicate_fills = int(c["duplicate_fills"])
        self.unknown_fills = int(c["unknown_fills"])
        self.rejected_orders = int(c["rejected_orders"])
        self.skipped_orders = int(c["skipped_orders"])
        self._extra_restore(data["state"])

    def _params_dict(self) -> dict[str, Any]:
        raise NotImplementedError

    def _extra_snapshot(self) -> dict[str, Any]:
        return {}

    def _extra_restore(self, data: dict[str, Any]) -> None:
        pass

    def report_extra(self) -> dict[str, Any]:
        """Strategy-specific figures for the report (plain data)."""
        return {}

"""DCA (3Commas-style safety-order deals) and recurring buys.

DCA deal, long only. A deal starts with a market buy spending `base_quote`; its volume-weighted fill price
is the deal's entry E (a Fraction of ticks). Safety order n (1..max_safety) is a limit buy at

    deviation_n = d * (1 - s^n) / (1 - s)     (s = 1: n * d)
    price_n     = floor(E * (1 - deviation_n))            ticks (a buy never above its deviation)
    quote_n     = floor(SO * v^(n-1))                     quote units
    lots_n      = floor(quote_n / (price_n * q))          lots (q: quote units per tick and lot)

with d = price_deviation, s = step_scale, v = volume_scale (ppm integers, 1_000_000 = 1). At most
`max_active` safety orders rest at a time; when one fills completely the next is placed.

Take profit on the true average entry net of fees: the deal holds B base units (received net of the buy
fees, which are taken in base) for a cost C in quote. The take-profit order sells L = floor(B / b) lots at
the lowest tick p with

    notional(p, L) - fee(notional(p, L), maker) >= ceil(C * (1 + tp))

that is p ~ (C / B) * (1 + tp) / (1 - f): the sale returns the whole cost plus `tp` after every fee paid.
After each safety fill the take profit is canceled and, once its cancel is done, placed again for the new
B and C. With `trailing` set there is no resting take profit: when the price reaches the take-profit price
(computed with the taker fee) the deal trails the highest price and sells at market when the price falls
to max(peak * (1 - trailing), take-profit price). Stop-loss: price <= floor(E * (1 - stop_loss)) cancels
the deal's orders and sells at market. A closed deal's profit is its sales net of fees minus the cost of
the base sold (average cost); base dust below one lot carries over to the next deal. The next deal starts
`cooldown` after a close; after `max_deals` deals (0 = no limit) the strategy stops.

Recurring buys: run k (k = 0, 1, ...) is due at start + k * interval (or, monthly, on the start's day of
month k months later, clamped to the month's end, same time of day, UTC). A due run spends `amount` with a
market buy. A run without enough free quote is skipped and recorded, and the plan continues; runs missed
while no event arrived (the service was down) are recorded as skipped except the latest, which runs.
"""

from __future__ import annotations

import calendar
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from fractions import Fraction
from typing import Any, Final

from services.common.errors import InvalidArgument, Reason
from services.common.markets import MarketSpec, fee
from services.common.units import INT64_MAX
from services.matching.model import BUY, DONE_FILLED, SELL
from services.quantizer.core import (
    DONE_NAMES,
    NEVER,
    NEW,
    RUNNING,
    STOPPED,
    STOPPING,
    Fill,
    Order,
    S,
    Strategy,
    amount_text,
    ceil_div,
    check_count,
    check_ppm,
    decimal_string,
    money,
    ppm_string,
    price_text,
)

MAX_SAFETY_ORDERS: Final = 100
MAX_SCALE_PPM: Final = 10 * S  # step and volume scales up to 10
MAX_TAKE_PROFIT_PPM: Final = 10 * S  # 1000 %
RETRY_US: Final = 60_000_000  # a base order that got no fill is retried after a minute
MAX_RECORDS: Final = 1000  # deal summaries / recurring runs kept in the state (the oldest are dropped)

BASE: Final = "B"
SAFETY: Final = "S"
TAKE: Final = "T"
EXIT: Final = "X"
RUN: Final = "R"

IDLE: Final = "idle"
OPENING: Final = "base"
OPEN: Final = "open"
CLOSING: Final = "exit"


@dataclass(frozen=True, slots=True)
class DcaParams:
    base_quote: int  # quote units spent by the base order
    safety_quote: int  # quote units of the first safety order
    max_safety: int
    max_active: int
    deviation_ppm: int  # d
    take_profit_ppm: int
    step_scale_ppm: int = S  # s
    volume_scale_ppm: int = S  # v
    trailing_ppm: int = 0  # 0 = a resting take-profit order
    stop_loss_ppm: int = 0  # from the entry; 0 = none
    cooldown_us: int = 0
    max_deals: int = 0  # 0 = no limit
    invest_quote: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_dict(data: dict[str, Any]) -> DcaParams:
        return DcaParams(**{k: int(data[k]) for k in DcaParams.__dataclass_fields__})


@dataclass(frozen=True, slots=True)
class SafetyOrder:
    n: int
    deviation: Fraction  # cumulative, from the entry
    price: int  # ticks
    quote: int  # quote units
    lots: int


def safety_deviation(deviation_ppm: int, step_scale_ppm: int, n: int) -> Fraction:
    """d * (1 - s^n) / (1 - s), or n * d when s = 1."""
    d = Fraction(deviation_ppm, S)
    s = Fraction(step_scale_ppm, S)
    if s == 1:
        return d * n
    return d * (1 - s**n) / (1 - s)


def safety_quote(safety_quote_units: int, volume_scale_ppm: int, n: int) -> int:
    """floor(SO * v^(n-1))."""
    scale: int = volume_scale_ppm ** (n - 1)
    unit: int = S ** (n - 1)
    return safety_quote_units * scale // unit


def dca_ladder(spec: MarketSpec, p: DcaParams, entry: Fraction | int) -> list[SafetyOrder]:
    """The safety orders of a deal entered at `entry` ticks (module docstring for the formulas)."""
    out: list[SafetyOrder] = []
    entry = Fraction(entry)
    k = spec.quote_units_per_tick_lot
    for n in range(1, p.max_safety + 1):
        dev = safety_deviation(p.deviation_ppm, p.step_scale_ppm, n)
        x = entry * (1 - dev)
        price = x.numerator // x.denominator if x > 0 else 0
        quote = safety_quote(p.safety_quote, p.volume_scale_ppm, n)
        lots = quote // (price * k) if price > 0 else 0
        out.append(SafetyOrder(n, dev, price, quote, lots))
    return out


def take_profit_price(
    spec: MarketSpec, base_units: int, cost: int, tp_ppm: int, fee_ppm: int
) -> tuple[int, int] | None:
    """(price, lots) of the take profit for a position of `base_units` bought for `cost` quote units:
    the lowest tick at which selling every whole lot returns cost * (1 + tp) after the fee. None when
    the position is less than the market's minimum amount."""
    lots = base_units // spec.base_units_per_lot
    if lots < spec.min_amount_lots or lots <= 0:
        return None
    target = ceil_div(cost * (S + tp_ppm), S)
    k = spec.quote_units_per_tick_lot

    def ok(price: int) -> bool:
        n = spec.notional(price, lots)
        return n - fee(n, fee_ppm) >= target

    price = max(1, ceil_div(target * S, (S - fee_ppm) * lots * k))
    while price > 1 and ok(price - 1):
        price -= 1
    while not ok(price):
        price += 1
    return price, lots


def validate_dca(spec: MarketSpec, p: DcaParams) -> None:
    """Checks that do not depend on the price. Raises InvalidArgument."""
    for name in ("base_quote", "safety_quote", "invest_quote", "cooldown_us", "max_deals"):
        value = getattr(p, name)
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= INT64_MAX:
            raise InvalidArgument(f"{name} is out of range", Reason.VALUE_OUT_OF_RANGE)
    minimum = max(1, spec.min_notional_units)
    if p.base_quote < minimum:
        raise InvalidArgument(
            f"base order {money(spec, p.base_quote)} is below the minimum {money(spec, minimum)}",
            Reason.BELOW_MIN_NOTIONAL,
        )
    check_count(p.max_safety, "max_safety_orders", low=0, high=MAX_SAFETY_ORDERS)
    if p.max_safety:
        check_count(p.max_active, "max_active_safety_orders", low=1, high=p.max_safety)
        if p.safety_quote < 1:
            raise InvalidArgument("safety order size must be positive", Reason.VALUE_OUT_OF_RANGE)
        check_ppm(p.deviation_ppm, "price_deviation", low=1)
        check_ppm(p.step_scale_ppm, "step_scale", low=1, high=MAX_SCALE_PPM)
        check_ppm(p.volume_scale_ppm, "volume_scale", low=1, high=MAX_SCALE_PPM)
    check_ppm(p.take_profit_ppm, "take_profit", low=1, high=MAX_TAKE_PROFIT_PPM)
    check_ppm(p.trailing_ppm, "trailing_deviation")
    check_ppm(p.stop_loss_ppm, "stop_loss")
    total = deal_quote(p)
    if total > INT64_MAX:
        raise InvalidArgument("the safety orders add up to more than 64 bits", Reason.VALUE_TOO_LARGE)
    if p.max_safety:
        deepest = safety_deviation(p.deviation_ppm, p.step_scale_ppm, p.max_safety)
        if deepest >= 1:
            raise InvalidArgument(
                f"safety order {p.max_safety} would sit {decimal_string(deepest * 100, 4)} % below the "
                "entry: the deviations must stay below 100 %",
                Reason.VALUE_OUT_OF_RANGE,
            )
        if p.stop_loss_ppm and Fraction(p.stop_loss_ppm, S) <= deepest:
            raise InvalidArgument(
                f"stop-loss {ppm_string(p.stop_loss_ppm)} must lie beyond the deepest safety order "
                f"({decimal_string(deepest * 100, 4)} % below the entry)",
                Reason.INVALID_FIELD,
            )
    if p.invest_quote < total:
        raise InvalidArgument(
            f"investment {money(spec, p.invest_quote)} does not cover one deal: base order "
            f"{money(spec, p.base_quote)} + {p.max_safety} safety orders "
            f"{money(spec, total - p.base_quote)} = {money(spec, total)}",
            Reason.VALUE_OUT_OF_RANGE,
        )


def deal_quote(p: DcaParams) -> int:
    """The quote one deal may spend: base order + every safety order."""
    return p.base_quote + sum(
        safety_quote(p.safety_quote, p.volume_scale_ppm, n) for n in range(1, p.max_safety + 1)
    )


@dataclass(frozen=True, slots=True)
class DcaPlan:
    price: int
    ladder: tuple[SafetyOrder, ...]
    deal_quote: int  # base + all safety orders
    tp_after_base: int  # take-profit price if only the base order fills (at `price`, taker fee)
    tp_all_filled: int  # take-profit price if every safety order fills too
    average_all_filled: Fraction  # entry net of fees, ticks, if every safety order fills
    stop_loss_price: int  # 0 = none


def preview_dca(spec: MarketSpec, p: DcaParams, price: int) -> DcaPlan:
    """The ladder and take-profit prices of a deal entered at `price` (the base order assumed filled at
    `price` with the taker fee, the safety orders at their prices with the maker fee). Raises
    InvalidArgument when an order would break the market's rules."""
    validate_dca(spec, p)
    if price < 1:
        raise InvalidArgument("the entry price must be positive", Reason.INVALID_FIELD)
    ladder = dca_ladder(spec, p, price)
    for so in ladder:
        if so.price < 1:
            raise InvalidArgument(f"safety order {so.n} would be priced at zero", Reason.VALUE_OUT_OF_RANGE)
        if so.lots < spec.min_amount_lots:
            raise InvalidArgument(
                f"safety order {so.n} at {price_text(spec, so.price)}: {amount_text(spec, so.lots)} is "
                f"below the minimum {spec.min_amount} {spec.base.symbol}",
                Reason.BELOW_MIN_AMOUNT,
            )
        if spec.notional(so.price, so.lots) < spec.min_notional_units:
            raise InvalidArgument(
                f"safety order {so.n} at {price_text(spec, so.price)}: "
                f"{money(spec, spec.notional(so.price, so.lots))} is below the minimum "
                f"{spec.min_notional} {spec.quote.symbol}",
                Reason.BELOW_MIN_NOTIONAL,
            )
    bpl = spec.base_units_per_lot
    k = spec.quote_units_per_tick_lot
    base_lots = p.base_quote // (price * k)
    cost = spec.notional(price, base_lots)
    base = base_lots * bpl - fee(base_lots * bpl, spec.taker_fee_ppm)
    tp_fee = spec.taker_fee_ppm if p.trailing_ppm else spec.maker_fee_ppm
    first = take_profit_price(spec, base, cost, p.take_profit_ppm, tp_fee)
    for so in ladder:
        cost += spec.notional(so.price, so.lots)
        base += so.lots * bpl - fee(so.lots * bpl, spec.maker_fee_ppm)
    last = take_profit_price(spec, base, cost, p.take_profit_ppm, tp_fee)
    sl = 0
    if p.stop_loss_ppm:
        x = Fraction(price) * (S - p.stop_loss_ppm) / S
        sl = x.numerator // x.denominator
    return DcaPlan(
        price=price,
        ladder=tuple(ladder),
        deal_quote=deal_quote(p),
        tp_after_base=first[0] if first else 0,
        tp_all_filled=last[0] if last else 0,
        average_all_filled=Fraction(cost * bpl, base * k) if base else Fraction(0),
        stop_loss_price=sl,
    )


def preview_dca_fields(spec: MarketSpec, plan: DcaPlan) -> dict[str, Any]:
    return {
        "entry_price": spec.format_price(plan.price),
        "safety_orders": [
            {
                "n": so.n,
                "deviation": decimal_string(so.deviation, 6),
                "price": spec.format_price(so.price),
                "quote": spec.format_quote(so.quote),
                "amount": spec.format_amount(so.lots),
            }
            for so in plan.ladder
        ],
        "deal_quote": spec.format_quote(plan.deal_quote),
        "take_profit_after_base": spec.format_price(plan.tp_after_base),
        "take_profit_all_filled": spec.format_price(plan.tp_all_filled),
        "average_entry_all_filled": decimal_string(
            plan.average_all_filled * spec.tick_scaled / 10**spec.price_decimals, spec.price_decimals + 2
        ),
        "stop_loss_price": spec.format_price(plan.stop_loss_price) if plan.stop_loss_price else "",
        "quote_asset": spec.quote.symbol,
    }


# --- the DCA state machine ---------------------------------------------------------------------


class DcaStrategy(Strategy):
    KIND = "dca"

    def __init__(self, spec: MarketSpec, strategy_id: int, params: DcaParams) -> None:
        super().__init__(spec, strategy_id)
        validate_dca(spec, params)
        self.params = params
        self.phase = IDLE
        self.deal = 0  # deals started
        self.deals_closed = 0
        self.next_start = 0
        self.entry_quote = 0  # the base order's fills: entry = entry_quote / (entry_lots * q)
        self.entry_lots = 0
        self.so_next = 1  # the next safety order number to place
        self.so_filled = 0
        self.tp_cid = ""
        self.tp_replace = False
        self.trail_active = False
        self.trail_peak = 0
        self.exit_reason = ""
        self.exit_sell = False
        self.deal_start = 0
        self.deal_realized = 0
        self.base_failures = 0
        self.waiting_funds = False
        self.deals: list[dict[str, Any]] = []
        self._ladder: list[SafetyOrder] | None = None
        self.account.deposit(0, params.invest_quote)

    # --- deal arithmetic -----------------------------------------------------------------------

    def entry(self) -> Fraction:
        return Fraction(self.entry_quote, self.entry_lots * self.spec.quote_units_per_tick_lot)

    def ladder(self) -> list[SafetyOrder]:
        if self._ladder is None:
            self._ladder = dca_ladder(self.spec, self.params, self.entry())
        return self._ladder

    def stop_loss_price(self) -> int:
        x = self.entry() * (S - self.params.stop_loss_ppm) / S
        return x.numerator // x.denominator

    def tp_target(self, fee_ppm: int) -> tuple[int, int] | None:
        a = self.account
        return take_profit_price(self.spec, a.base, a.cost, self.params.take_profit_ppm, fee_ppm)

    def _label(self, kind: str, n: int = 0) -> str:
        suffix = {BASE: "b", SAFETY: f"s{n}", TAKE: "t", EXIT: "x"}[kind]
        return f"d{self.deal}{suffix}"

    # --- events --------------------------------------------------------------------------------

    def _on_tick(self, price: int) -> None:
        if self.status == NEW:
            self.status = RUNNING
        if self.status != RUNNING:
            return
        if self.phase == IDLE:
            self._maybe_start()
        elif self.phase == OPEN:
            self._check_exits(price)

    def _on_timer(self) -> None:
        if self.status == RUNNING and self.phase == IDLE:
            self._maybe_start()

    def _on_funds(self) -> None:
        if self.status == RUNNING and self.phase == IDLE:
            self._maybe_start()

    def _maybe_start(self) -> None:
        p = self.params
        if self.last_price == 0 or self.last_time < self.next_start:
            return
        if p.max_deals and self.deal >= p.max_deals:
            self.status = STOPPED
            self.stop_reason = "max_deals"
            return
        if self.free_quote() < p.base_quote:
            self.waiting_funds = True
            return
        self.waiting_funds = False
        self.deal += 1
        self.phase = OPENING
        self.deal_start = self.last_time
        self.deal_realized = 0
        self.entry_quote = self.entry_lots = 0
        self.so_next = 1
        self.so_filled = 0
        self.tp_cid = ""
        self.tp_replace = False
        self.trail_active = False
        self.trail_peak = 0
        self.exit_reason = ""
        self._ladder = None
        if self._place(BUY, 0, 0, BASE, budget=p.base_quote, label=self._label(BASE)) is None:
            self.deal -= 1
            self.phase = IDLE
            self.waiting_funds = True

    def _check_exits(self, price: int) -> None:
        p = self.params
        if p.stop_loss_ppm and price <= self.stop_loss_price():
            self._exit("stop_loss", sell=True)
            return
        if not p.trailing_ppm:
            return
        target = self.tp_target(self.spec.taker_fee_ppm)
        if target is None:
            return
        tp = target[0]
        if not self.trail_active:
            if price < tp:
                return
            self.trail_active = True
            self.trail_peak = price
        if price > self.trail_peak:
            self.trail_peak = price
        stop = max(self.trail_peak * (S - p.trailing_ppm) // S, tp)
        if price <= stop:
            self._exit("trailing", sell=True)

    def _place_safeties(self) -> None:
        p = self.params
        active = sum(1 for o in self.orders.values() if o.tag == SAFETY)
        ladder = self.ladder()
        while active < p.max_active and self.so_next <= p.max_safety:
            so = ladder[self.so_next - 1]
            self.so_next += 1
            if self._place(BUY, so.price, so.lots, SAFETY, so.n, label=self._label(SAFETY, so.n)) is not None:
                active += 1

    def _place_tp(self) -> None:
        if self.params.trailing_ppm:
            return
        target = self.tp_target(self.spec.maker_fee_ppm)
        if target is None:
            return
        price, lots = target
        order = self._place(SELL, price, lots, TAKE, label=self._label(TAKE))
        self.tp_cid = order.cid if order is not None else ""

    def _on_fill(self, order: Order, fill: Fill, removed_cost: int) -> None:
        if fill.side == SELL:
            gain = fill.quote_units - fill.fee - removed_cost
            self.deal_realized += gain
            self.account.realized += gain
        if order.tag == SAFETY and self.phase == OPEN and self.status == RUNNING:
            tp = self.orders.get(self.tp_cid)
            if tp is not None:
                self.tp_replace = True
                self._cancel(tp)  # placed again for the new average when its cancel is done
            elif not self.tp_replace:
                self._place_tp()

    def _on_complete(self, order: Order, reason: int) -> None:
        tag = order.tag
        if tag == BASE:
            if order.filled == 0:
                self.deal -= 1
                self.base_failures += 1
                self.phase = IDLE
                self.next_start = self.last_time + RETRY_US
            else:
                self.entry_quote = order.filled_quote
                self.entry_lots = order.filled
                self._ladder = None
                self.phase = OPEN
                if self.status == RUNNING:
                    self._place_safeties()
                    self._place_tp()
        elif tag == SAFETY:
            if reason == DONE_FILLED:
                self.so_filled += 1
                if self.phase == OPEN and self.status == RUNNING:
                    self._place_safeties()
        elif tag == TAKE:
            if order.cid == self.tp_cid:
                self.tp_cid = ""
            if reason == DONE_FILLED and self.phase == OPEN:
                self._exit("take_profit", sell=False)
            elif self.phase == OPEN and self.status == RUNNING:
                # canceled to be replaced after a safety fill (or canceled by someone else): place anew
                self.tp_replace = False
                self._place_tp()
        if self.phase == CLOSING:
            self._exit_progress()
        if self.status == STOPPING:
            self._continue_stop()

    def _exit(self, reason: str, *, sell: bool) -> None:
        self.phase = CLOSING
        self.exit_reason = reason
        self.exit_sell = sell
        self._cancel_all()
        self._exit_progress()

    def _exit_progress(self) -> None:
        if self.orders:
            return
        if self.exit_sell:
            self.exit_sell = False
            if self._sell_all_base(EXIT, self._label(EXIT)) is not None:
                return
        self._close_deal()

    def _close_deal(self) -> None:
        self.deals_closed += 1
        self.account.pairs += 1
        self.deals.append(
            {
                "deal": self.deal,
                "start_time": self.deal_start,
                "close_time": self.last_time,
                "reason": self.exit_reason,
                "safety_filled": self.so_filled,
                "profit": self.deal_realized,
            }
        )
        del self.deals[:-MAX_RECORDS]
        self.phase = IDLE
        self.next_start = self.last_time + self.params.cooldown_us
        p = self.params
        if p.max_deals and self.deals_closed >= p.max_deals:
            self.status = STOPPED
            self.stop_reason = "max_deals"
        elif self.status == RUNNING:
            self._maybe_start()

    def _on_stop(self, mode: int) -> None:
        self.exit_reason = "stop"

    def _stop_tag(self) -> tuple[str, str]:
        return EXIT, self._label(EXIT)

    # --- what a driver asks --------------------------------------------------------------------

    def wakeup(self) -> int | None:
        idle = self.status == RUNNING and self.phase == IDLE and not self.waiting_funds
        return self.next_start if idle and self.next_start > self.last_time else None

    def band(self) -> tuple[int, int]:
        if self.status == NEW:
            return (0, 0)
        if self.status != RUNNING:
            return (0, NEVER)
        if self.phase == IDLE:
            # a start needs a tick once next_start has come (the driver's Timer covers the wait)
            return (0, 0) if self.last_time >= self.next_start and not self.waiting_funds else (0, NEVER)
        if self.phase != OPEN:
            return (0, NEVER)
        p = self.params
        lo = self.stop_loss_price() if p.stop_loss_ppm else 0
        if not p.trailing_ppm:
            return (lo, NEVER)
        if self.trail_active:
            return (0, 0)
        target = self.tp_target(self.spec.taker_fee_ppm)
        return (lo, target[0] if target else NEVER)

    # --- snapshot ------------------------------------------------------------------------------

    def _params_dict(self) -> dict[str, Any]:
        return self.params.to_dict()

    _STATE = (
        "phase",
        "deal",
        "deals_closed",
        "next_start",
        "entry_quote",
        "entry_lots",
        "so_next",
        "so_filled",
        "tp_cid",
        "tp_replace",
        "trail_active",
        "trail_peak",
        "exit_reason",
        "exit_sell",
        "deal_start",
        "deal_realized",
        "base_failures",
        "waiting_funds",
    )

    def _extra_snapshot(self) -> dict[str, Any]:
        data: dict[str, Any] = {name: getattr(self, name) for name in self._STATE}
        data["deals"] = [dict(d) for d in self.deals]
        return data

    def _extra_restore(self, data: dict[str, Any]) -> None:
        for name in self._STATE:
            current = getattr(self, name)
            setattr(self, name, type(current)(data[name]))
        self.deals = [dict(d) for d in data["deals"]]
        self._ladder = None

    @classmethod
    def restore(cls, spec: MarketSpec, data: dict[str, Any]) -> DcaStrategy:
        d = cls(spec, int(data["strategy_id"]), DcaParams.from_dict(data["params"]))
        d._restore_common(data)
        return d

    def report_extra(self) -> dict[str, Any]:
        return {
            "phase": self.phase,
            "deals_started": self.deal,
            "deals_closed": self.deals_closed,
            "safety_filled": self.so_filled,
            "base_failures": self.base_failures,
            "deals": [dict(d) for d in self.deals],
        }


# --- recurring buys ----------------------------------------------------------------------------

MIN_INTERVAL_US: Final = 3_600_000_000  # hourly
MAX_INTERVAL_US: Final = 31 * 86_400_000_000
MAX_INTERVAL_MONTHS: Final = 12
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


def add_months(time_us: int, months: int) -> int:
    """The same day of month (clamped to the month's end) and time of day, `months` later, UTC."""
    t = _EPOCH + timedelta(microseconds=time_us)
    index = t.year * 12 + (t.month - 1) + months
    year, month = divmod(index, 12)
    month += 1
    day = min(t.day, calendar.monthrange(year, month)[1])
    moved = t.replace(year=year, month=month, day=day)
    return (moved - _EPOCH) // timedelta(microseconds=1)


@dataclass(frozen=True, slots=True)
class RecurringParams:
    amount_quote: int  # quote units per run
    start_time: int  # microseconds: run 0
    interval_us: int = 0  # fixed interval (hourly .. 31 days), or
    interval_months: int = 0  # calendar months (1..12)
    max_runs: int = 0  # 0 = no limit
    invest_quote: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_dict(data: dict[str, Any]) -> RecurringParams:
        return RecurringParams(**{k: int(data[k]) for k in RecurringParams.__dataclass_fields__})


def validate_recurring(spec: MarketSpec, p: RecurringParams) -> None:
    minimum = max(1, spec.min_notional_units)
    if p.amount_quote < minimum or p.amount_quote > INT64_MAX:
        raise InvalidArgument(
            f"amount per run {money(spec, p.amount_quote)} is below the minimum {money(spec, minimum)}",
            Reason.BELOW_MIN_NOTIONAL,
        )
    if p.start_time < 0 or p.start_time > INT64_MAX:
        raise InvalidArgument("start_time is out of range", Reason.VALUE_OUT_OF_RANGE)
    if bool(p.interval_us) == bool(p.interval_months):
        raise InvalidArgument("give either interval_us or interval_months", Reason.INVALID_FIELD)
    if p.interval_us:
        check_count(p.interval_us, "interval_us", low=MIN_INTERVAL_US, high=MAX_INTERVAL_US)
    else:
        check_count(p.interval_months, "interval_months", low=1, high=MAX_INTERVAL_MONTHS)
    check_count(p.max_runs, "max_runs", low=0, high=INT64_MAX)
    check_count(p.invest_quote, "invest_quote", low=0, high=INT64_MAX)


class RecurringBuy(Strategy):
    KIND = "recurring"

    def __init__(self, spec: MarketSpec, strategy_id: int, params: RecurringParams) -> None:
        super().__init__(spec, strategy_id)
        validate_recurring(spec, params)
        self.params = params
        self.next_run = 0
        self.bought_runs = 0
        self.skipped_runs = 0
        self.pending = ""
        self.runs: list[dict[str, Any]] = []  # the latest MAX_RECORDS runs, bought or skipped
        self.account.deposit(0, params.invest_quote)

    def run_time(self, k: int) -> int:
        p = self.params
        if p.interval_us:
            return p.start_time + k * p.interval_us
        return add_months(p.start_time, k * p.interval_months)

    def _record(self, run: int, status: str, reason: str = "", quote: int = 0, base: int = 0) -> None:
        self.runs.append(
            {
                "run": run,
                "time": self.run_time(run),
                "status": status,
                "reason": reason,
                "quote": quote,
                "base": base,
            }
        )
        del self.runs[:-MAX_RECORDS]
        if status == "skipped":
            self.skipped_runs += 1
        else:
            self.bought_runs += 1

    def _done_all(self) -> bool:
        return bool(self.params.max_runs) and self.next_run >= self.params.max_runs

    def _on_tick(self, price: int) -> None:
        self._run_due()

    def _on_timer(self) -> None:
        self._run_due()

    def _run_due(self) -> None:
        if self.status == NEW:
            self.status = RUNNING
        if self.status != RUNNING:
            return
        now = self.last_time
        p = self.params
        latest = -1
        if p.interval_us:
            if now >= p.start_time:
                latest = (now - p.start_time) // p.interval_us
        else:
            k = self.next_run
            while not (p.max_runs and k >= p.max_runs) and self.run_time(k) <= now:
                latest = k
                k += 1
        if p.max_runs:
            latest = min(latest, p.max_runs - 1)
        if latest < self.next_run:
            return
        for missed in range(self.next_run, latest):
            self._record(missed, "skipped", "missed")
        self.next_run = latest + 1
        if self.pending:
            self._record(latest, "skipped", "previous run still open")
        elif self.free_quote() < p.amount_quote:
            self._record(latest, "skipped", f"insufficient funds: {money(self.spec, self.free_quote())} free")
        else:
            order = self._place(BUY, 0, 0, RUN, latest, budget=p.amount_quote, label=f"r{latest}")
            if order is None:
                self._record(latest, "skipped", "order refused")
            else:
                self.pending = order.cid
        if self._done_all() and not self.pending:
            self.status = STOPPED
            self.stop_reason = "max_runs"

    def _on_complete(self, order: Order, reason: int) -> None:
        if order.tag == RUN:
            if order.cid == self.pending:
                self.pending = ""
            if order.filled:
                self._record(order.level, "bought", "", order.filled_quote, order.filled_base - order.fee)
            else:
                self._record(
                    order.level, "skipped", f"order {DONE_NAMES.get(reason, str(reason))} without a fill"
                )
            if self._done_all() and self.status == RUNNING:
                self.status = STOPPED
                self.stop_reason = "max_runs"
        if self.status == STOPPING:
            self._continue_stop()

    def _stop_tag(self) -> tuple[str, str]:
        return EXIT, "x"

    def wakeup(self) -> int | None:
        if self.status in (NEW, RUNNING) and not self._done_all():
            return self.run_time(self.next_run)
        return None

    def band(self) -> tuple[int, int]:
        return (0, 0) if self.status == NEW else (0, NEVER)

    def _params_dict(self) -> dict[str, Any]:
        return self.params.to_dict()

    def _extra_snapshot(self) -> dict[str, Any]:
        return {
            "next_run": self.next_run,
            "bought_runs": self.bought_runs,
            "skipped_runs": self.skipped_runs,
            "pending": self.pending,
            "runs": [dict(r) for r in self.runs],
        }

    def _extra_restore(self, data: dict[str, Any]) -> None:
        self.next_run = int(data["next_run"])
        self.bought_runs = int(data["bought_runs"])
        self.skipped_runs = int(data["skipped_runs"])
        self.pending = str(data["pending"])
        self.runs = [dict(r) for r in data["runs"]]

    @classmethod
    def restore(cls, spec: MarketSpec, data: dict[str, Any]) -> RecurringBuy:
        r = cls(spec, int(data["strategy_id"]), RecurringParams.from_dict(data["params"]))
        r._restore_common(data)
        return r

    def report_extra(self) -> dict[str, Any]:
        return {
            "runs_bought": self.bought_runs,
            "runs_skipped": self.skipped_runs,
            "next_run_time": self.run_time(self.next_run) if not self._done_all() else 0,
            "skipped": [dict(r) for r in self.runs if r["status"] == "skipped"],
        }

"""Strategy reports: the same figures for a live strategy and for a backtest (both read the strategy's
own state plus the market's last price and the time).

All money is in asset units; every figure is exact (integers, or Fractions formatted as decimal strings
at the edge). Definitions:

- investment = the quote invested plus the invested base valued at the first price the strategy saw;
- current value = quote held + floor(base held x last price);
- total profit = current value - investment;
- realized profit = what the strategy's rules attribute to completed round trips, after every fee:
  grid: each sell fill at level j against the buy of level j-1 (a fully filled sell is a matched pair);
  DCA: each sale minus the average cost of the base sold (a closed deal is a matched pair);
  recurring buys: none (they only buy);
- floating profit = total profit - realized profit: the held base at the last price against its cost,
  plus the base dust and rounding not yet realized;
- fees paid per asset (the engine charges each fill's fee in the asset received);
- average entry = the average-cost basis of the base held, per base, as a price (cost / base);
- annualized return, simple (not compounded), chosen because it is exact in rational arithmetic:

      annualized = (current value - investment) / investment x YEAR / elapsed

  with YEAR = 365 days and elapsed = now - the time of the first price the strategy saw, in
  microseconds; "0" when nothing was invested or no time has passed. It is formatted with 6 decimals
  ("0.125000" = 12.5 % a year).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Final

from services.common.markets import MarketSpec
from services.quantizer.core import Strategy, decimal_string, value_of_base

YEAR_US: Final = 365 * 86_400 * 1_000_000
RATE_PLACES: Final = 6


@dataclass(frozen=True, slots=True)
class Report:
    kind: str
    status: str
    last_price: int  # ticks
    time: int  # microseconds
    elapsed_us: int
    realized_profit: int
    matched_pairs: int
    floating_profit: int
    total_profit: int
    investment: int
    current_value: int
    base_held: int
    quote_held: int
    fees_base: int
    fees_quote: int
    average_entry: Fraction | None  # ticks; None when no base is held
    annualized_return: Fraction
    fills: int
    orders_placed: int
    open_orders: int
    extra: dict[str, Any] = field(default_factory=dict)


def annualized(investment: int, value: int, elapsed_us: int) -> Fraction:
    """(value - investment) / investment x YEAR / elapsed (simple annualization)."""
    if investment <= 0 or elapsed_us <= 0:
        return Fraction(0)
    return Fraction((value - investment) * YEAR_US, investment * elapsed_us)


def build_report(strategy: Strategy, last_price: int = 0, now: int = 0) -> Report:
    """The report of `strategy` at `last_price` (default: the last price it saw) and time `now`
    (default: the last time it saw)."""
    spec = strategy.spec
    acct = strategy.account
    price = last_price or strategy.last_price
    now = now or strategy.last_time
    # Invested base not valued yet (no price seen) is valued at the report's price.
    investment = acct.invest_value + (
        value_of_base(spec, acct.unvalued_base, price) if acct.unvalued_base else 0
    )
    value = acct.quote + value_of_base(spec, acct.base, price)
    total = value - investment
    elapsed = now - acct.start_time if acct.start_time >= 0 else 0
    entry = (
        Fraction(acct.cost * spec.base_units_per_lot, acct.base * spec.quote_units_per_tick_lot)
        if acct.base > 0
        else None
    )
    return Report(
        kind=strategy.KIND,
        status=strategy.status,
        last_price=price,
        time=now,
        elapsed_us=max(0, elapsed),
        realized_profit=acct.realized,
        matched_pairs=acct.pairs,
        floating_profit=total - acct.realized,
        total_profit=total,
        investment=investment,
        current_value=value,
        base_held=acct.base,
        quote_held=acct.quote,
        fees_base=acct.fees_base,
        fees_quote=acct.fees_quote,
        average_entry=entry,
        annualized_return=annualized(investment, value, elapsed),
        fills=acct.fills,
        orders_placed=acct.orders_placed,
        open_orders=len(strategy.orders),
        extra={
            **strategy.report_extra(),
            "duplicate_fills": strategy.duplicate_fills,
            "unknown_fills": strategy.unknown_fills,
            "rejected_orders": strategy.rejected_orders,
            "skipped_orders": strategy.skipped_orders,
            "failure": strategy.failure,
            "stop_reason": strategy.stop_reason,
        },
    )


def price_decimal(spec: MarketSpec, ticks: Fraction, extra_places: int = 2) -> str:
    """A price in ticks (possibly fractional) as a decimal in quote per base."""
    return decimal_string(
        ticks * spec.tick_scaled / 10**spec.price_decimals, spec.price_decimals + extra_places
    )


def report_fields(spec: MarketSpec, r: Report) -> dict[str, Any]:
    """The report as the API and people read it: decimal strings in the assets' units."""
    q = spec.format_quote
    return {
        "kind": r.kind,
        "status": r.status,
        "market": spec.symbol,
        "last_price": spec.format_price(r.last_price),
        "time_us": r.time,
        "elapsed_us": r.elapsed_us,
        "realized_profit": q(r.realized_profit),
        "matched_pairs": r.matched_pairs,
        "floating_profit": q(r.floating_profit),
        "total_profit": q(r.total_profit),
        "investment": q(r.investment),
        "current_value": q(r.current_value),
        "base_held": spec.format_base(r.base_held),
        "quote_held": q(r.quote_held),
        "fees_paid": {spec.base.symbol: spec.format_base(r.fees_base), spec.quote.symbol: q(r.fees_quote)},
        "average_entry": price_decimal(spec, r.average_entry) if r.average_entry is not None else "",
        "annualized_return": decimal_string(r.annualized_return, RATE_PLACES),
        "annualized_return_formula": "(current_value - investment) / investment * 365 days / elapsed",
        "fills": r.fills,
        "orders_placed": r.orders_placed,
        "open_orders": r.open_orders,
        "quote_asset": spec.quote.symbol,
        "base_asset": spec.base.symbol,
        "extra": r.extra,
    }


def describe(spec: MarketSpec, r: Report) -> list[str]:
    """Lines for people: decimals with their asset symbols."""
    f = report_fields(spec, r)
    qs, bs = spec.quote.symbol, spec.base.symbol
    lines = [
        f"{r.kind} on {spec.symbol}: {r.status}, last price {f['last_price']} {qs}",
        f"investment {f['investment']} {qs}, value {f['current_value']} {qs}, "
        f"profit {f['total_profit']} {qs}",
        f"realized {f['realized_profit']} {qs} over {r.matched_pairs} matched pairs, "
        f"floating {f['floating_profit']} {qs}",
        f"holding {f['base_held']} {bs} and {f['quote_held']} {qs}; fees {f['fees_paid'][bs]} {bs}, "
        f"{f['fees_paid'][qs]} {qs}",
        f"annualized return {f['annualized_return']} (simple: {f['annualized_return_formula']})",
    ]
    if f["average_entry"]:
        lines.append(f"average entry {f['average_entry']} {qs}")
    return lines

"""Strategy parameters from the API edge: decimal strings (prices and amounts in the market's units,
ratios as fractions: "0.01" = 1 %) to the integer parameters of grid.py and dca.py.

The field names are those of exchange.v1.GridConfig, DcaConfig and RecurringBuyConfig
(protos/exchange/v1/quantizer_service.proto), so the service maps a message with `MessageToDict`-like
plain data, and the backtest command line reads the same names from a JSON file. Errors are
InvalidArgument with the reason of what is wrong (INVALID_DECIMAL, PRICE_NOT_ON_TICK, ...).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from services.common.errors import InvalidArgument, Reason, quote
from services.common.limits import MAX_DECIMAL, check_str
from services.common.markets import MarketSpec
from services.common.units import AmountError, AmountNotOnLot, PriceNotOnTick, parse_units
from services.quantizer.core import Strategy
from services.quantizer.dca import DcaParams, DcaStrategy, RecurringBuy, RecurringParams
from services.quantizer.grid import ARITHMETIC, GEOMETRIC, GridParams, GridStrategy

SPACINGS: Final = {
    "arithmetic": ARITHMETIC,
    "GRID_SPACING_ARITHMETIC": ARITHMETIC,
    "geometric": GEOMETRIC,
    "GRID_SPACING_GEOMETRIC": GEOMETRIC,
}
INTERVALS: Final = {
    "1h": 3_600_000_000,
    "RECURRING_INTERVAL_HOUR": 3_600_000_000,
    "1d": 86_400_000_000,
    "RECURRING_INTERVAL_DAY": 86_400_000_000,
    "1w": 7 * 86_400_000_000,
    "RECURRING_INTERVAL_WEEK": 7 * 86_400_000_000,
}
MONTHLY: Final = ("1M", "RECURRING_INTERVAL_MONTH")


def _edge_error(exc: AmountError) -> InvalidArgument:
    if isinstance(exc, PriceNotOnTick):
        return InvalidArgument(str(exc), Reason.PRICE_NOT_ON_TICK)
    if isinstance(exc, AmountNotOnLot):
        return InvalidArgument(str(exc), Reason.AMOUNT_NOT_ON_LOT)
    return InvalidArgument(str(exc), Reason.INVALID_DECIMAL)


def _text(data: Mapping[str, Any], name: str) -> str:
    value = data.get(name, "")
    if value is None:
        return ""
    if not isinstance(value, str):
        raise InvalidArgument(f"{name} must be a decimal string", Reason.INVALID_DECIMAL)
    return check_str(value, name, MAX_DECIMAL)


def price(spec: MarketSpec, data: Mapping[str, Any], name: str, *, required: bool = False) -> int:
    text = _text(data, name)
    if not text:
        if required:
            raise InvalidArgument(f"{name} is required", Reason.INVALID_FIELD)
        return 0
    try:
        return spec.parse_price(text, field=name)
    except AmountError as exc:
        raise _edge_error(exc) from None


def quote_units(spec: MarketSpec, data: Mapping[str, Any], name: str, *, required: bool = False) -> int:
    text = _text(data, name)
    if not text:
        if required:
            raise InvalidArgument(f"{name} is required", Reason.INVALID_FIELD)
        return 0
    try:
        return parse_units(text, spec.quote.decimals, field=name, allow_zero=True)
    except AmountError as exc:
        raise _edge_error(exc) from None


def base_units(spec: MarketSpec, data: Mapping[str, Any], name: str) -> int:
    text = _text(data, name)
    if not text:
        return 0
    try:
        return parse_units(text, spec.base.decimals, field=name, allow_zero=True)
    except AmountError as exc:
        raise _edge_error(exc) from None


def ratio_ppm(data: Mapping[str, Any], name: str, default: int = 0) -> int:
    text = _text(data, name)
    if not text:
        return default
    try:
        return parse_units(text, 6, field=name, allow_zero=True)
    except AmountError as exc:
        raise _edge_error(exc) from None


def count(data: Mapping[str, Any], name: str, default: int = 0) -> int:
    value = data.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgument(f"{name} must be an integer", Reason.INVALID_FIELD)
    if value < 0:
        raise InvalidArgument(f"{name} must not be negative", Reason.VALUE_OUT_OF_RANGE)
    return value


def flag(data: Mapping[str, Any], name: str) -> bool:
    value = data.get(name, False)
    if not isinstance(value, bool):
        raise InvalidArgument(f"{name} must be true or false", Reason.INVALID_FIELD)
    return value


DEFAULT_BUY_SLIPPAGE_PPM: Final = 10_000  # 1 %: what a grid's initial purchase may pay above the start


def grid_params(spec: MarketSpec, data: Mapping[str, Any]) -> GridParams:
    if flag(data, "trailing_down"):
        raise InvalidArgument("trailing_down is not supported yet", Reason.INVALID_FIELD)
    spacing_name = data.get("spacing", "arithmetic")
    spacing = SPACINGS.get(spacing_name) if isinstance(spacing_name, str) else None
    if spacing is None:
        raise InvalidArgument(
            f"spacing must be arithmetic or geometric, not {quote(spacing_name)}", Reason.INVALID_FIELD
        )
    return GridParams(
        lower=price(spec, data, "lower_price", required=True),
        upper=price(spec, data, "upper_price", required=True),
        intervals=count(data, "intervals"),
        spacing=spacing,
        invest_quote=quote_units(spec, data, "investment", required=True),
        invest_base=base_units(spec, data, "investment_base"),
        trigger=price(spec, data, "trigger_price"),
        stop_loss=price(spec, data, "stop_loss_price"),
        take_profit=price(spec, data, "take_profit_price"),
        sell_on_stop=flag(data, "sell_on_stop"),
        trailing_up=flag(data, "trailing_up"),
        trailing_limit=price(spec, data, "trailing_up_limit_price"),
        buy_slippage_ppm=slippage(data, "initial_buy_slippage", DEFAULT_BUY_SLIPPAGE_PPM),
    )


def slippage(data: Mapping[str, Any], name: str, default: int) -> int:
    ppm = ratio_ppm(data, name, default)
    if ppm >= 1_000_000:
        raise InvalidArgument(f"{name} must be below 1 (100 %)", Reason.VALUE_OUT_OF_RANGE)
    return ppm


def dca_params(spec: MarketSpec, data: Mapping[str, Any]) -> DcaParams:
    side = data.get("side", "SIDE_BUY")
    if side not in ("SIDE_BUY", "buy", 1):
        raise InvalidArgument("only long DCA (side buy) is supported", Reason.INVALID_FIELD)
    return DcaParams(
        base_quote=quote_units(spec, data, "base_order_quote", required=True),
        safety_quote=quote_units(spec, data, "safety_order_quote"),
        max_safety=count(data, "max_safety_orders"),
        max_active=count(data, "max_active_safety_orders", 1),
        deviation_ppm=ratio_ppm(data, "price_deviation"),
        take_profit_ppm=ratio_ppm(data, "take_profit"),
        step_scale_ppm=ratio_ppm(data, "step_scale", 1_000_000),
        volume_scale_ppm=ratio_ppm(data, "volume_scale", 1_000_000),
        trailing_ppm=ratio_ppm(data, "trailing_deviation"),
        stop_loss_ppm=ratio_ppm(data, "stop_loss"),
        cooldown_us=count(data, "cooldown_seconds") * 1_000_000,
        max_deals=count(data, "max_deals"),
        invest_quote=quote_units(spec, data, "investment", required=True),
    )


def recurring_params(spec: MarketSpec, data: Mapping[str, Any]) -> RecurringParams:
    interval = data.get("interval", "")
    interval_us = interval_months = 0
    if interval in MONTHLY:
        interval_months = 1
    elif isinstance(interval, str) and interval in INTERVALS:
        interval_us = INTERVALS[interval]
    else:
        interval_us = count(data, "interval_seconds") * 1_000_000
        interval_months = count(data, "interval_months")
        if not interval_us and not interval_months:
            raise InvalidArgument(
                "interval must be RECURRING_INTERVAL_HOUR/DAY/WEEK/MONTH (or 1h, 1d, 1w, 1M, or "
                "interval_seconds / interval_months)",
                Reason.INVALID_FIELD,
            )
    return RecurringParams(
        amount_quote=quote_units(spec, data, "amount", required=True),
        start_time=count(data, "start_time_us"),
        interval_us=interval_us,
        interval_months=interval_months,
        max_runs=count(data, "max_runs"),
        invest_quote=quote_units(spec, data, "investment"),
    )


def strategy_from_config(spec: MarketSpec, strategy_id: int, data: Mapping[str, Any]) -> Strategy:
    """A strategy from {"kind": "grid" | "dca" | "recurring", ...fields}."""
    kind = data.get("kind")
    if kind == "grid":
        return GridStrategy(spec, strategy_id, grid_params(spec, data))
    if kind == "dca":
        return DcaStrategy(spec, strategy_id, dca_params(spec, data))
    if kind == "recurring":
        return RecurringBuy(spec, strategy_id, recurring_params(spec, data))
    raise InvalidArgument(f"kind must be grid, dca or recurring, not {quote(kind)}", Reason.INVALID_FIELD)


def restore_strategy(spec: MarketSpec, data: dict[str, Any]) -> Strategy:
    """The strategy a `snapshot()` describes."""
    kind = data.get("kind")
    if kind == "grid":
        return GridStrategy.restore(spec, data)
    if kind == "dca":
        return DcaStrategy.restore(spec, data)
    if kind == "recurring":
        return RecurringBuy.restore(spec, data)
    raise ValueError(f"unknown strategy kind {kind!r}")

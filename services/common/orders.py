"""An order as the public API shows it (exchange.v1.Order): the one mapping from the integers that
accounts (its open and recent orders) and history (its order rows) keep to the message, decimals
formatted with the market's scales. Imports neither service."""

from __future__ import annotations

import functools

from exchange.v1 import types_pb2

from services.common.enums import BUY, MARKET
from services.common.markets import MarketSpec
from services.common.units import format_units
from services.common.values import value


@value
class OrderView:
    """An order's state in integers (prices in ticks, amounts in lots, money in units, fee rates in
    ppm, times in microseconds); the field names are exchange.v1.OrderState's."""

    order_id: int
    user_id: int
    client_order_id: str
    market: str
    side: int
    type: int
    time_in_force: int
    post_only: bool
    self_trade_prevention: int
    price_ticks: int
    amount_lots: int
    quote_budget: int
    filled_lots: int
    filled_quote_units: int
    remaining_lots: int
    fee_units: int
    status: int
    done_detail: int
    created_time_us: int
    updated_time_us: int
    expire_time_us: int
    maker_fee_ppm: int
    taker_fee_ppm: int


@functools.lru_cache(maxsize=256)
def fee_rate(ppm: int) -> str:
    """A fee rate in parts per million as the API's decimal string ("0.001")."""
    return format_units(ppm, 6)


def order_message(o: OrderView, spec: MarketSpec | None) -> types_pb2.Order:
    """The API message of an order. Without the market's spec (a stored row of a market that is no
    longer configured) the decimal fields stay empty."""
    if spec is None:
        price = amount = quote_amount = filled_amount = filled_quote = remaining = fee = fee_asset = ""
    else:
        is_buy = o.side == BUY
        market_buy = o.type == MARKET and is_buy
        price = spec.format_price(o.price_ticks) if o.price_ticks else ""
        amount = "" if market_buy else spec.format_amount(o.amount_lots)
        quote_amount = spec.format_quote(o.quote_budget) if market_buy else ""
        filled_amount = spec.format_amount(o.filled_lots)
        filled_quote = spec.format_quote(o.filled_quote_units)
        remaining = spec.format_amount(o.remaining_lots)
        fee = spec.format_base(o.fee_units) if is_buy else spec.format_quote(o.fee_units)
        fee_asset = spec.base.symbol if is_buy else spec.quote.symbol
    return types_pb2.Order(
        order_id=o.order_id,
        client_order_id=o.client_order_id,
        user_id=o.user_id,
        market=o.market,
        side=o.side,  # type: ignore[arg-type]
        type=o.type,  # type: ignore[arg-type]
        time_in_force=o.time_in_force,  # type: ignore[arg-type]
        post_only=o.post_only,
        self_trade_prevention=o.self_trade_prevention,  # type: ignore[arg-type]
        price=price,
        amount=amount,
        quote_amount=quote_amount,
        filled_amount=filled_amount,
        filled_quote=filled_quote,
        remaining_amount=remaining,
        fee=fee,
        fee_asset=fee_asset,
        status=o.status,  # type: ignore[arg-type]
        done_detail=o.done_detail,  # type: ignore[arg-type]
        created_time_us=o.created_time_us,
        updated_time_us=o.updated_time_us,
        expire_time_us=o.expire_time_us,
        maker_fee_rate=fee_rate(o.maker_fee_ppm),
        taker_fee_rate=fee_rate(o.taker_fee_ppm),
    )

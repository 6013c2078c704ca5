"""Conversions at the API edge: requests (decimal strings) to accounts commands, orders and balances
to their public messages."""

from __future__ import annotations

import functools

from exchange.v1 import accounts_service_pb2 as pb
from exchange.v1 import events_pb2 as ev
from exchange.v1 import types_pb2

from services.accounts.ledger import BUY, MARKET, AccountOrder
from services.common.errors import InvalidArgument, NotFound
from services.common.markets import MarketCatalog, MarketSpec
from services.common.units import INT64_MAX, format_units


def market_spec_message(spec: MarketSpec) -> types_pb2.MarketSpec:
    return types_pb2.MarketSpec(
        symbol=spec.symbol,
        base=spec.base.symbol,
        quote=spec.quote.symbol,
        price_tick=spec.price_tick,
        lot_size=spec.lot_size,
        min_amount=spec.min_amount,
        min_notional=spec.min_notional,
        maker_fee_rate=_rate(spec.maker_fee_ppm),
        taker_fee_rate=_rate(spec.taker_fee_ppm),
        quote_units_per_tick_lot=spec.quote_units_per_tick_lot,
        base_units_per_lot=spec.base_units_per_lot,
        base_decimals=spec.base.decimals,
        quote_decimals=spec.quote.decimals,
        shard=spec.shard,
    )


@functools.lru_cache(maxsize=256)
def _rate(ppm: int) -> str:
    return format_units(ppm, 6)


def order_message(o: AccountOrder, catalog: MarketCatalog) -> types_pb2.Order:
    spec = catalog.markets[o.market]
    is_market_buy = o.type == MARKET and o.side == BUY
    return types_pb2.Order(
        order_id=o.order_id,
        client_order_id=o.client_order_id,
        user_id=o.user_id,
        market=o.market,
        side=o.side,  # type: ignore[arg-type]
        type=o.type,  # type: ignore[arg-type]
        time_in_force=o.tif,  # type: ignore[arg-type]
        post_only=o.post_only,
        self_trade_prevention=o.stp,  # type: ignore[arg-type]
        price=spec.format_price(o.price) if o.price else "",
        amount="" if is_market_buy else spec.format_amount(o.amount),
        quote_amount=spec.format_quote(o.quote_budget) if is_market_buy else "",
        filled_amount=spec.format_amount(o.filled),
        filled_quote=spec.format_quote(o.filled_quote),
        remaining_amount=spec.format_amount(o.remaining),
        fee=(spec.format_base(o.fee) if o.side == BUY else spec.format_quote(o.fee)),
        fee_asset=spec.base.symbol if o.side == BUY else spec.quote.symbol,
        status=o.status,  # type: ignore[arg-type]
        done_detail=o.detail,  # type: ignore[arg-type]
        created_time_us=o.created,
        updated_time_us=o.updated,
        expire_time_us=o.expire_at,
        maker_fee_rate=_rate(o.maker_fee),
        taker_fee_rate=_rate(o.taker_fee),
    )


def order_ack(o: AccountOrder) -> types_pb2.Order:
    """The order's identity and state only (no decimal formatting): batched entry answers."""
    return types_pb2.Order(
        order_id=o.order_id,
        client_order_id=o.client_order_id,
        user_id=o.user_id,
        market=o.market,
        side=o.side,  # type: ignore[arg-type]
        type=o.type,  # type: ignore[arg-type]
        status=o.status,  # type: ignore[arg-type]
        created_time_us=o.created,
    )


def _spec(catalog: MarketCatalog, market: str) -> MarketSpec:
    if not market:
        raise InvalidArgument("market is required")
    spec = catalog.markets.get(market)
    if spec is None:
        raise NotFound(f"unknown market {market!r}")
    return spec


def _user(user_id: int) -> int:
    if user_id < 1:
        raise InvalidArgument("user_id must be positive")
    return user_id


def place_command(req: pb.PlaceOrderRequest, catalog: MarketCatalog) -> ev.AccountsCommand:
    """Parse a PlaceOrderRequest (decimals, enums) into the command accounts journals."""
    spec = _spec(catalog, req.market)
    _user(req.user_id)
    price = _parse_cached(spec, req.price, True) if req.price else 0
    amount = _parse_cached(spec, req.amount, False) if req.amount else 0
    budget = spec.parse_quote(req.quote_amount) if req.quote_amount else 0
    if req.type == MARKET and req.price:
        raise InvalidArgument("a market order has no price")
    if req.expire_time_us < 0:
        raise InvalidArgument("expire_time_us must not be negative")
    cmd = ev.AccountsCommand()
    p = cmd.place_order
    p.client_order_id = req.client_order_id
    o = p.order
    o.user_id = req.user_id
    o.market = req.market
    o.side = req.side
    o.type = req.type
    o.time_in_force = req.time_in_force
    o.post_only = req.post_only
    o.self_trade_prevention = req.self_trade_prevention
    o.price_ticks = price
    o.amount_lots = amount
    o.quote_budget = budget
    o.expire_time_us = req.expire_time_us
    return cmd


_PARSED: dict[tuple[str, str, bool], int] = {}


def _parse_cached(spec: MarketSpec, text: str, is_price: bool) -> int:
    """Prices and amounts repeat a lot in real flows: remember recent parses (bounded)."""
    key = (spec.symbol, text, is_price)
    value = _PARSED.get(key)
    if value is None:
        value = spec.parse_price(text) if is_price else spec.parse_amount(text)
        if len(_PARSED) > 100_000:
            _PARSED.clear()
        _PARSED[key] = value
    return value


def cancel_command(req: pb.CancelOrderRequest) -> ev.AccountsCommand:
    _user(req.user_id)
    if not req.order_id and not req.client_order_id:
        raise InvalidArgument("order_id or client_order_id is required")
    cmd = ev.AccountsCommand()
    c = cmd.cancel_order
    c.user_id = req.user_id
    c.order_id = req.order_id
    c.client_order_id = req.client_order_id
    c.market = req.market
    return cmd


def cancel_all_command(req: pb.CancelAllOrdersRequest, catalog: MarketCatalog) -> ev.AccountsCommand:
    _user(req.user_id)
    if req.market:
        _spec(catalog, req.market)
    cmd = ev.AccountsCommand()
    a = cmd.cancel_all_orders
    a.user_id = req.user_id
    a.market = req.market
    a.side = req.side
    return cmd


def amend_commands(
    req: pb.AmendOrderRequest, catalog: MarketCatalog, order_market: str
) -> list[ev.AccountsCommand]:
    """A reduce and/or a move (reduce first: it keeps priority and needs no extra funds)."""
    _user(req.user_id)
    if not req.order_id and not req.client_order_id:
        raise InvalidArgument("order_id or client_order_id is required")
    if not req.new_price and not req.new_amount:
        raise InvalidArgument("new_price or new_amount is required")
    spec = _spec(catalog, order_market)
    if req.market and req.market != order_market:
        raise NotFound(f"order is not on market {req.market}")
    out = []
    if req.new_amount:
        cmd = ev.AccountsCommand()
        r = cmd.reduce_order
        r.user_id = req.user_id
        r.order_id = req.order_id
        r.client_order_id = req.client_order_id
        r.new_amount_lots = spec.parse_amount(req.new_amount, field="new_amount")
        out.append(cmd)
    if req.new_price:
        cmd = ev.AccountsCommand()
        m = cmd.move_order
        m.user_id = req.user_id
        m.order_id = req.order_id
        m.client_order_id = req.client_order_id
        m.new_price_ticks = spec.parse_price(req.new_price, field="new_price")
        out.append(cmd)
    return out


def adjust_command(
    user_id: int,
    asset_symbol: str,
    amount: str,
    business: str,
    business_id: str,
    catalog: MarketCatalog,
    sign: int,
) -> ev.AccountsCommand:
    _user(user_id)
    asset = catalog.assets.get(asset_symbol)
    if asset is None:
        raise NotFound(f"unknown asset {asset_symbol!r}")
    units = asset.parse(amount)
    if units > INT64_MAX:
        raise InvalidArgument("amount out of range")
    cmd = ev.AccountsCommand()
    a = cmd.adjust_balance
    a.user_id = user_id
    a.asset = asset_symbol
    a.change = sign * units
    a.business = business
    a.business_id = business_id
    return cmd


def balance_message(catalog: MarketCatalog, asset: str, avail: int, frozen: int) -> types_pb2.Balance:
    a = catalog.assets[asset]
    return types_pb2.Balance(asset=asset, available=a.format(avail), frozen=a.format(frozen))

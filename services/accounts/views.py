"""Conversions at the API edge: requests (decimal strings) to accounts commands, orders and balances
to their public messages.

Every integer and string field of every AccountsService request is checked here against
services.common.limits before anything reaches the state machine (user ids 1..INT64_MAX, order ids,
times and sequences within int64, the length of every string); a violation is INVALID_ARGUMENT with a
precise reason, and error messages quote at most a short prefix of what was sent (errors.quote).
Decimal parse errors become InvalidArgument with PRICE_NOT_ON_TICK, AMOUNT_NOT_ON_LOT or
INVALID_DECIMAL.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from exchange.v1 import accounts_service_pb2 as pb
from exchange.v1 import events_pb2 as ev
from exchange.v1 import types_pb2

from services.accounts.ledger import (
    BUSINESS_ID_RE,
    BUSINESS_RE,
    CLIENT_ID_RE,
    MARKET_BUY_NEEDS_BUDGET,
    AccountOrder,
)
from services.accounts.machine import reservation_for
from services.accounts.subaccounts import SubAccount, check_label, check_transfer_id
from services.common.enums import BUY, LIMIT, MARKET, SELL
from services.common.errors import QUOTE_LIMIT, InvalidArgument, NotFound, Reason, quote
from services.common.limits import (
    MAX_BUSINESS,
    MAX_BUSINESS_ID,
    MAX_CLIENT_ORDER_ID,
    MAX_DECIMAL,
    MAX_ORDER_ID,
    MAX_PAGE_SIZE,
    MAX_PAGE_TOKEN,
    MAX_SYMBOL,
    check_order_id,
    check_sequence,
    check_str,
    check_time,
    check_user,
    page_size,
)
from services.common.markets import MarketCatalog, MarketSpec
from services.common.orders import fee_rate
from services.common.orders import order_message as order_api_message
from services.common.units import AmountError, AmountNotOnLot, PriceNotOnTick, decimals_of


def market_spec_message(spec: MarketSpec) -> types_pb2.MarketSpec:
    return types_pb2.MarketSpec(
        symbol=spec.symbol,
        base=spec.base.symbol,
        quote=spec.quote.symbol,
        price_tick=spec.price_tick,
        lot_size=spec.lot_size,
        min_amount=spec.min_amount,
        min_notional=spec.min_notional,
        maker_fee_rate=fee_rate(spec.maker_fee_ppm),
        taker_fee_rate=fee_rate(spec.taker_fee_ppm),
        quote_units_per_tick_lot=spec.quote_units_per_tick_lot,
        base_units_per_lot=spec.base_units_per_lot,
        base_decimals=spec.base.decimals,
        quote_decimals=spec.quote.decimals,
        shard=spec.shard,
    )


def order_message(o: AccountOrder, catalog: MarketCatalog) -> types_pb2.Order:
    return order_api_message(o.view(), catalog.markets[o.market])


def fill_order_ack(msg: types_pb2.Order, o: AccountOrder) -> None:
    """The order's identity and state only (no decimal formatting), written into `msg` (fresh):
    batched entry answers."""
    msg.order_id = o.order_id
    if o.client_order_id:
        msg.client_order_id = o.client_order_id
    msg.user_id = o.user_id
    msg.market = o.market
    msg.side = o.side  # type: ignore[assignment]
    msg.type = o.type  # type: ignore[assignment]
    msg.status = o.status  # type: ignore[assignment]
    msg.created_time_us = o.created


# Enum values the API accepts (exchange.v1 Side, OrderType, TimeInForce, SelfTradePrevention; 0 means
# the default where there is one). The ledger checks the combinations.
_SIDES = frozenset((BUY, SELL))
_TYPES = frozenset((LIMIT, MARKET))
_TIFS = frozenset(range(0, 5))
_STPS = frozenset(range(0, 4))


def _spec(catalog: MarketCatalog, market: str) -> MarketSpec:
    check_str(market, "market", MAX_SYMBOL)
    if not market:
        raise InvalidArgument("market is required", Reason.INVALID_FIELD)
    spec = catalog.markets.get(market)
    if spec is None:
        raise NotFound(f"unknown market {quote(market)}", Reason.UNKNOWN_MARKET)
    return spec


def _client_order_id(value: str, *, placing: bool = False) -> str:
    check_str(value, "client_order_id", MAX_CLIENT_ORDER_ID)
    if placing and value and not CLIENT_ID_RE.fullmatch(value):
        raise InvalidArgument("client_order_id must be 1-64 characters [A-Za-z0-9_.:-]", Reason.INVALID_FIELD)
    return value


def _amount_error(exc: AmountError, text: str) -> InvalidArgument:
    reason = (
        Reason.PRICE_NOT_ON_TICK
        if isinstance(exc, PriceNotOnTick)
        else Reason.AMOUNT_NOT_ON_LOT
        if isinstance(exc, AmountNotOnLot)
        else Reason.INVALID_DECIMAL
    )
    message = str(exc)
    if len(text) > QUOTE_LIMIT:
        message = message.replace(repr(text), quote(text))
    return InvalidArgument(message, reason)


def _parse(
    parse: Callable[[str], int], text: str, name: str, step: tuple[int, str, Reason] | None = None
) -> int:
    """A decimal field: bounded length, then parsed exactly (errors with their precise reason).
    `step` is (decimals, step text, reason) of a price tick or lot: a decimal finer than the step's
    decimals is off the step, not malformed."""
    check_str(text, name, MAX_DECIMAL)
    try:
        return parse(text)
    except AmountError as exc:
        if step is not None and not isinstance(exc, (PriceNotOnTick, AmountNotOnLot)):
            decimals, step_text, reason = step
            try:
                finer = decimals_of(text) > decimals
            except AmountError:
                finer = False
            if finer:
                message = f"{name}: {quote(text)} is not a multiple of {step_text}"
                raise InvalidArgument(message, reason) from None
        raise _amount_error(exc, text) from None


def _price(spec: MarketSpec, text: str, name: str = "price") -> int:
    """A price in ticks (place orders' prices are cached: they repeat a lot)."""
    return _parse(
        (lambda t: _parse_cached(spec, t, True))
        if name == "price"
        else (lambda t: spec.parse_price(t, field=name)),
        text,
        name,
        (spec.price_decimals, f"the price tick {spec.price_tick}", Reason.PRICE_NOT_ON_TICK),
    )


def _amount(spec: MarketSpec, text: str, name: str = "amount") -> int:
    """An amount in lots (place orders' amounts are cached: they repeat a lot)."""
    return _parse(
        (lambda t: _parse_cached(spec, t, False))
        if name == "amount"
        else (lambda t: spec.parse_amount(t, field=name)),
        text,
        name,
        (spec.amount_decimals, f"the lot size {spec.lot_size}", Reason.AMOUNT_NOT_ON_LOT),
    )


def _need_order(order_id: int, client_order_id: str) -> None:
    check_order_id(order_id)
    _client_order_id(client_order_id)
    if not order_id and not client_order_id:
        raise InvalidArgument("order_id or client_order_id is required", Reason.INVALID_FIELD)


def place_command(req: pb.PlaceOrderRequest, catalog: MarketCatalog) -> ev.AccountsCommand:
    """Parse a PlaceOrderRequest (decimals, enums) into the command accounts journals. (Each request
    field is read once, and fields at their default value are not set: the same message, cheaper.)"""
    user, market, side, type_, tif = req.user_id, req.market, req.side, req.type, req.time_in_force
    stp, expire, client_order_id = req.self_trade_prevention, req.expire_time_us, req.client_order_id
    price_text, amount_text, quote_text = req.price, req.amount, req.quote_amount
    check_user(user)
    spec = _spec(catalog, market)
    _client_order_id(client_order_id, placing=True)
    check_time(expire, "expire_time_us")
    if side not in _SIDES:
        raise InvalidArgument("side must be SIDE_BUY or SIDE_SELL", Reason.INVALID_ORDER)
    if type_ not in _TYPES:
        raise InvalidArgument("type must be ORDER_TYPE_LIMIT or ORDER_TYPE_MARKET", Reason.INVALID_ORDER)
    if tif not in _TIFS:
        raise InvalidArgument("unknown time_in_force", Reason.INVALID_ORDER)
    if stp not in _STPS:
        raise InvalidArgument("unknown self_trade_prevention", Reason.INVALID_ORDER)
    price = _price(spec, price_text) if price_text else 0
    amount = _amount(spec, amount_text) if amount_text else 0
    budget = _parse(spec.parse_quote, quote_text, "quote_amount") if quote_text else 0
    if type_ == MARKET and price_text:
        raise InvalidArgument("a market order has no price", Reason.INVALID_ORDER)
    if type_ == MARKET and side == BUY and amount and not budget:
        # A market buy gives quote_amount (spend it) or amount and quote_amount (buy that much, spending
        # at most quote_amount): the budget is what accounts freezes (see the ledger).
        raise InvalidArgument(MARKET_BUY_NEEDS_BUDGET, Reason.INVALID_ORDER)
    cmd = ev.AccountsCommand()
    p = cmd.place_order
    if client_order_id:
        p.client_order_id = client_order_id
    o = p.order
    o.user_id = user
    o.market = market
    o.side = side
    o.type = type_
    if tif:
        o.time_in_force = tif
    if req.post_only:
        o.post_only = True
    if stp:
        o.self_trade_prevention = stp
    if price:
        o.price_ticks = price
    if amount:
        o.amount_lots = amount
    if budget:
        o.quote_budget = budget
    if expire:
        o.expire_time_us = expire
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
    check_user(req.user_id)
    check_str(req.market, "market", MAX_SYMBOL)
    _need_order(req.order_id, req.client_order_id)
    cmd = ev.AccountsCommand()
    c = cmd.cancel_order
    c.user_id = req.user_id
    c.order_id = req.order_id
    c.client_order_id = req.client_order_id
    c.market = req.market
    return cmd


def cancel_all_command(req: pb.CancelAllOrdersRequest, catalog: MarketCatalog) -> ev.AccountsCommand:
    check_user(req.user_id)
    if req.market:
        _spec(catalog, req.market)
    if req.side not in (0, *_SIDES):
        raise InvalidArgument("unknown side", Reason.INVALID_FIELD)
    cmd = ev.AccountsCommand()
    a = cmd.cancel_all_orders
    a.user_id = req.user_id
    a.market = req.market
    a.side = req.side
    return cmd


def check_amend_request(req: pb.AmendOrderRequest) -> None:
    """The checks of an AmendOrderRequest that need no market (before its order is looked up)."""
    check_user(req.user_id)
    check_str(req.market, "market", MAX_SYMBOL)
    _need_order(req.order_id, req.client_order_id)
    check_str(req.new_price, "new_price", MAX_DECIMAL)
    check_str(req.new_amount, "new_amount", MAX_DECIMAL)
    if not req.new_price and not req.new_amount:
        raise InvalidArgument("new_price or new_amount is required", Reason.INVALID_FIELD)


def amend_commands(
    req: pb.AmendOrderRequest, catalog: MarketCatalog, market: str
) -> list[ev.AccountsCommand]:
    """The one amend_order command (decimals parsed at `market`'s scales, which the machine checks is
    the order's market), preceded by its sequence reservation when it changes both price and amount
    (see services.accounts.machine). Submit them together, in this order."""
    check_amend_request(req)
    if req.market and req.market != market:
        raise NotFound(f"the order is not on market {quote(req.market)}", Reason.ORDER_NOT_FOUND)
    spec = _spec(catalog, market)
    cmd = ev.AccountsCommand()
    a = cmd.amend_order
    a.user_id = req.user_id
    a.order_id = req.order_id
    a.client_order_id = req.client_order_id
    a.market = market
    if req.new_amount:
        a.new_amount_lots = _amount(spec, req.new_amount, "new_amount")
    if req.new_price:
        a.new_price_ticks = _price(spec, req.new_price, "new_price")
    if a.new_amount_lots and a.new_price_ticks:
        return [reservation_for(cmd), cmd]
    return [cmd]


def adjust_command(
    user_id: int,
    asset_symbol: str,
    amount: str,
    business: str,
    business_id: str,
    catalog: MarketCatalog,
    sign: int,
) -> ev.AccountsCommand:
    check_user(user_id)
    check_str(asset_symbol, "asset", MAX_SYMBOL)
    check_str(business, "business", MAX_BUSINESS)
    check_str(business_id, "business_id", MAX_BUSINESS_ID)
    asset = catalog.assets.get(asset_symbol)
    if asset is None:
        raise NotFound(f"unknown asset {quote(asset_symbol)}", Reason.UNKNOWN_ASSET)
    if not BUSINESS_RE.fullmatch(business):
        raise InvalidArgument("business must be 1-64 characters [A-Za-z0-9_.:-]", Reason.INVALID_FIELD)
    if not BUSINESS_ID_RE.fullmatch(business_id):
        raise InvalidArgument("business_id must be 1-128 characters [A-Za-z0-9_.:#/-]", Reason.INVALID_FIELD)
    units = _parse(asset.parse, amount, "amount")  # at most INT64_MAX (parse_units refuses more)
    cmd = ev.AccountsCommand()
    a = cmd.adjust_balance
    a.user_id = user_id
    a.asset = asset_symbol
    a.change = sign * units
    a.business = business
    a.business_id = business_id
    return cmd


def open_sub_account_command(req: pb.OpenSubAccountRequest) -> ev.AccountsCommand:
    check_user(req.owner_user_id)  # the machine refuses sub-accounts and other ids from 2^62
    check_label(req.label)
    cmd = ev.AccountsCommand()
    o = cmd.open_sub_account
    o.owner_user_id = req.owner_user_id
    o.label = req.label
    return cmd


def transfer_command(req: pb.TransferRequest, catalog: MarketCatalog) -> ev.AccountsCommand:
    """A TransferRequest (amount a decimal of the asset's scale, > 0) as the journaled command; the
    machine checks the accounts (owner and own sub-account), the id's reuse and the funds."""
    check_user(req.from_user_id)
    check_user(req.to_user_id)
    check_str(req.asset, "asset", MAX_SYMBOL)
    check_transfer_id(req.transfer_id)
    asset = catalog.assets.get(req.asset)
    if asset is None:
        raise NotFound(f"unknown asset {quote(req.asset)}", Reason.UNKNOWN_ASSET)
    units = _parse(asset.parse, req.amount, "amount")  # > 0, at most INT64_MAX, the asset's scale
    cmd = ev.AccountsCommand()
    t = cmd.transfer
    t.from_user_id = req.from_user_id
    t.to_user_id = req.to_user_id
    t.asset = req.asset
    t.amount = units
    t.transfer_id = req.transfer_id
    return cmd


def sub_account_message(s: SubAccount) -> pb.SubAccount:
    return pb.SubAccount(user_id=s.user_id, owner_user_id=s.owner_user_id, label=s.label)


def sub_accounts_request(req: pb.ListSubAccountsRequest) -> tuple[int, int, int]:
    """(owner, page size, after user id) of a ListSubAccountsRequest."""
    check_user(req.owner_user_id, allow_fee_account=False)
    size = page_size(req.page_size)
    after = 0
    if req.page_token:
        check_str(req.page_token, "page_token", MAX_PAGE_TOKEN)
        if not _PAGE_TOKEN.fullmatch(req.page_token):
            raise InvalidArgument(f"malformed page_token {quote(req.page_token)}", Reason.INVALID_PAGE_TOKEN)
        after = int(req.page_token, 16)
    return req.owner_user_id, size, after


# --- reads -----------------------------------------------------------------------------------


def balances_request(req: pb.GetBalancesRequest, catalog: MarketCatalog) -> tuple[int, list[str]]:
    """(user, assets) of a GetBalancesRequest; the fee account (user 0) may be read."""
    check_user(req.user_id, allow_fee_account=True)
    if len(req.assets) > MAX_PAGE_SIZE:
        raise InvalidArgument(f"at most {MAX_PAGE_SIZE} assets per request", Reason.VALUE_OUT_OF_RANGE)
    for a in req.assets:
        check_str(a, "asset", MAX_SYMBOL)
        if a not in catalog.assets:
            raise NotFound(f"unknown asset {quote(a)}", Reason.UNKNOWN_ASSET)
    return req.user_id, list(req.assets) or list(catalog.assets)


def check_order_request(req: pb.GetOrderRequest) -> None:
    check_user(req.user_id)
    _need_order(req.order_id, req.client_order_id)


_PAGE_TOKEN = re.compile(r"[0-9a-f]{1,16}")


def page_token(order_id: int) -> str:
    return format(order_id, "x")


def open_orders_request(req: pb.ListOpenOrdersRequest, catalog: MarketCatalog) -> tuple[int, str, int, int]:
    """(user, market, page size, after order id) of a ListOpenOrdersRequest."""
    check_user(req.user_id)
    if req.market:
        _spec(catalog, req.market)
    size = page_size(req.page_size)
    after = 0
    if req.page_token:
        check_str(req.page_token, "page_token", MAX_PAGE_TOKEN)
        if not _PAGE_TOKEN.fullmatch(req.page_token) or int(req.page_token, 16) > MAX_ORDER_ID:
            raise InvalidArgument(f"malformed page_token {quote(req.page_token)}", Reason.INVALID_PAGE_TOKEN)
        after = int(req.page_token, 16)
    return req.user_id, req.market, size, after


def user_stream_request(req: pb.StreamUserEventsRequest) -> tuple[int, int]:
    """(user, from_sequence) of a StreamUserEventsRequest; the fee account (user 0) may be read."""
    return check_user(req.user_id, allow_fee_account=True), check_sequence(req.from_sequence)


def account_stream_request(req: pb.StreamAccountEventsRequest) -> int:
    return check_sequence(req.from_sequence)


def balance_message(catalog: MarketCatalog, asset: str, avail: int, frozen: int) -> types_pb2.Balance:
    a = catalog.assets[asset]
    return types_pb2.Balance(asset=asset, available=a.format(avail), frozen=a.format(frozen))

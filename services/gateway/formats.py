"""The exchange's messages as Binance JSON. Every number stays a decimal string (or an integer of
ticks, lots or units turned into one by the market spec); nothing passes through float.

Order status: PENDING and OPEN are NEW; what an IOC / FOK / post-only order leaves unfilled is EXPIRED
(as Binance says it), a self-trade prevention cancel EXPIRED_IN_MATCH.
"""

from __future__ import annotations

from fractions import Fraction
from typing import Any

from exchange.v1 import history_service_pb2 as hpb
from exchange.v1 import market_service_pb2 as kpb
from exchange.v1 import types_pb2

from services.common import enums
from services.common.markets import MarketSpec
from services.common.units import AmountError, format_units, parse_units
from services.gateway.symbols import binance_symbol

SIDES = {enums.BUY: "BUY", enums.SELL: "SELL"}
TIFS = {enums.GTC: "GTC", enums.IOC: "IOC", enums.FOK: "FOK", enums.GTD: "GTD"}
STP_NAMES = {
    enums.STP_DEFAULT: "EXPIRE_MAKER",
    enums.STP_CANCEL_TAKER: "EXPIRE_TAKER",
    enums.STP_CANCEL_MAKER: "EXPIRE_MAKER",
    enums.STP_CANCEL_BOTH: "EXPIRE_BOTH",
}
STP_BY_NAME = {
    "EXPIRE_TAKER": enums.STP_CANCEL_TAKER,
    "EXPIRE_MAKER": enums.STP_CANCEL_MAKER,
    "EXPIRE_BOTH": enums.STP_CANCEL_BOTH,
}
STATUS_NAMES = {
    enums.PENDING: "NEW",
    enums.OPEN: "NEW",
    enums.PARTIALLY_FILLED: "PARTIALLY_FILLED",
    enums.FILLED: "FILLED",
    enums.CANCELED: "CANCELED",
    enums.EXPIRED: "EXPIRED",
    enums.REJECTED: "REJECTED",
}
# Done details Binance reports as EXPIRED rather than CANCELED.
EXPIRED_DETAILS = {
    enums.DETAIL_IOC_REMAINDER,
    enums.DETAIL_NO_LIQUIDITY,
    enums.DETAIL_FOK_NOT_FILLABLE,
    enums.DETAIL_POST_ONLY_WOULD_TAKE,
    enums.DETAIL_EXPIRE_TIME,
}
KLINE_INTERVALS = {
    "1m": kpb.KLINE_INTERVAL_1M,
    "5m": kpb.KLINE_INTERVAL_5M,
    "15m": kpb.KLINE_INTERVAL_15M,
    "1h": kpb.KLINE_INTERVAL_1H,
    "4h": kpb.KLINE_INTERVAL_4H,
    "1d": kpb.KLINE_INTERVAL_1D,
    "1w": kpb.KLINE_INTERVAL_1W,
}
INTERVAL_MS = {
    "1m": 60_000,
    "5m": 300_000,
    "15m": 900_000,
    "1h": 3_600_000,
    "4h": 14_400_000,
    "1d": 86_400_000,
    "1w": 604_800_000,
}


def ms(time_us: int) -> int:
    return time_us // 1000


def dec(text: str) -> str:
    """A decimal string of a message, "0" where the message leaves it empty."""
    return text or "0"


def order_status(order: types_pb2.Order) -> str:
    if order.status == enums.CANCELED:
        if order.done_detail == enums.DETAIL_SELF_TRADE:
            return "EXPIRED_IN_MATCH"
        if order.done_detail in EXPIRED_DETAILS:
            return "EXPIRED"
    return STATUS_NAMES.get(order.status, "NEW")


def order_type(order: types_pb2.Order) -> str:
    if order.type == enums.MARKET:
        return "MARKET"
    return "LIMIT_MAKER" if order.post_only else "LIMIT"


def order_json(order: types_pb2.Order, *, full: bool = True) -> dict[str, Any]:
    """An order as GET /api/v3/order answers it (and POST with newOrderRespType RESULT)."""
    out: dict[str, Any] = {
        "symbol": binance_symbol(order.market),
        "orderId": order.order_id,
        "orderListId": -1,
        "clientOrderId": order.client_order_id or str(order.order_id),
        "transactTime": ms(order.created_time_us),
    }
    if not full:
        return out
    tif = order.time_in_force or (enums.IOC if order.type == enums.MARKET else enums.GTC)
    out.update(
        {
            "price": dec(order.price),
            "origQty": dec(order.amount),
            "executedQty": dec(order.filled_amount),
            "origQuoteOrderQty": dec(order.quote_amount),
            "cummulativeQuoteQty": dec(order.filled_quote),
            "status": order_status(order),
            "timeInForce": TIFS.get(tif, "GTC"),
            "type": order_type(order),
            "side": SIDES.get(order.side, "BUY"),
            "stopPrice": "0",
            "icebergQty": "0",
            "time": ms(order.created_time_us),
            "updateTime": ms(order.updated_time_us or order.created_time_us),
            "isWorking": order.status in (enums.OPEN, enums.PARTIALLY_FILLED, enums.PENDING),
            "workingTime": ms(order.created_time_us),
            "selfTradePreventionMode": STP_NAMES.get(order.self_trade_prevention, "EXPIRE_MAKER"),
            # Beyond Binance: expiry (GTD), fees so far.
            "expireTime": ms(order.expire_time_us),
            "fee": dec(order.fee),
            "feeAsset": order.fee_asset,
        }
    )
    return out


def balance_json(b: types_pb2.Balance) -> dict[str, str]:
    return {"asset": b.asset, "free": dec(b.available), "locked": dec(b.frozen)}


def user_trade_json(t: hpb.UserTrade) -> dict[str, Any]:
    return {
        "symbol": binance_symbol(t.market),
        "id": t.trade_id,
        "orderId": t.order_id,
        "orderListId": -1,
        "price": t.price,
        "qty": t.amount,
        "quoteQty": t.quote_amount,
        "commission": dec(t.fee),
        "commissionAsset": t.fee_asset,
        "time": ms(t.time_us),
        "isBuyer": t.side == enums.BUY,
        "isMaker": t.role == "maker",
        "isBestMatch": True,
    }


def public_trade_json(t: types_pb2.PublicTrade) -> dict[str, Any]:
    return {
        "id": t.trade_id,
        "price": t.price,
        "qty": t.amount,
        "quoteQty": t.quote_amount,
        "time": ms(t.time_us),
        "isBuyerMaker": t.taker_side == enums.SELL,
        "isBestMatch": True,
    }


def agg_trade_json(t: types_pb2.PublicTrade) -> dict[str, Any]:
    return {
        "a": t.trade_id,
        "p": t.price,
        "q": t.amount,
        "f": t.trade_id,
        "l": t.trade_id,
        "T": ms(t.time_us),
        "m": t.taker_side == enums.SELL,
        "M": True,
    }


def levels(rows: Any) -> list[list[str]]:
    return [[lv.price, lv.amount] for lv in rows]


def kline_row(k: kpb.Kline, interval: str) -> list[Any]:
    open_ms = ms(k.open_time_us)
    return [
        open_ms,
        dec(k.open),
        dec(k.high),
        dec(k.low),
        dec(k.close),
        dec(k.volume),
        open_ms + INTERVAL_MS[interval] - 1,
        dec(k.quote_volume),
        k.trade_count,
        "0",
        "0",
        "0",
    ]


def _signed_units(text: str, decimals: int) -> int:
    """A decimal string of a message that may carry a sign ("-0.0125") as an integer of units."""
    negative = text.startswith("-")
    value = parse_units(text[1:] if negative else text, decimals, allow_zero=True)
    return -value if negative else value


def ticker_json(spec: MarketSpec, t: kpb.Ticker, *, bid_qty: str = "0", ask_qty: str = "0") -> dict[str, Any]:
    """GET /api/v3/ticker/24hr for one market."""
    last, open_ = t.last_price, t.open
    change = "0"
    percent = "0"
    avg = "0"
    try:
        if last and open_:
            change = spec.format_price(spec.parse_price(last) - spec.parse_price(open_))
        if t.change_ratio:
            percent = format_units(_signed_units(t.change_ratio, 4) * 100, 4)
        if t.volume and t.quote_volume:
            volume = spec.base.parse(t.volume, allow_zero=True)
            quote_volume = spec.quote.parse(t.quote_volume, allow_zero=True)
            if volume:
                exact = Fraction(quote_volume * 10**spec.base.decimals, volume)  # quote units per base
                step = 10**spec.quote.decimals // 10**spec.price_decimals or 1
                avg = format_units(int(exact) // step * step, spec.quote.decimals)
    except AmountError:
        pass
    close_ms = ms(t.time_us)
    return {
        "symbol": binance_symbol(spec.symbol),
        "priceChange": change,
        "priceChangePercent": percent,
        "weightedAvgPrice": avg,
        "prevClosePrice": dec(open_),
        "lastPrice": dec(last),
        "lastQty": "0",
        "bidPrice": dec(t.best_bid),
        "bidQty": bid_qty,
        "askPrice": dec(t.best_ask),
        "askQty": ask_qty,
        "openPrice": dec(open_),
        "highPrice": dec(t.high),
        "lowPrice": dec(t.low),
        "volume": dec(t.volume),
        "quoteVolume": dec(t.quote_volume),
        "openTime": max(0, close_ms - 86_400_000),
        "closeTime": close_ms,
        "firstId": -1,
        "lastId": -1,
        "count": t.trade_count,
    }


def order_from_state(spec: MarketSpec, o: Any) -> types_pb2.Order:
    """An events.proto OrderState (integers) as the API's Order (decimal strings)."""
    fields: dict[str, Any] = {
        "order_id": o.order_id,
        "client_order_id": o.client_order_id,
        "market": o.market,
        "side": o.side,
        "type": o.type,
        "time_in_force": o.time_in_force,
        "post_only": o.post_only,
        "self_trade_prevention": o.self_trade_prevention,
        "price": spec.format_price(o.price_ticks) if o.price_ticks else "",
        "amount": spec.format_amount(o.amount_lots) if o.amount_lots else "",
        "quote_amount": spec.format_quote(o.quote_budget) if o.quote_budget else "",
        "filled_amount": spec.format_amount(o.filled_lots),
        "filled_quote": spec.format_quote(o.filled_quote_units),
        "remaining_amount": spec.format_amount(o.remaining_lots),
        "status": o.status,
        "done_detail": o.done_detail,
        "created_time_us": o.created_time_us,
        "updated_time_us": o.updated_time_us,
        "expire_time_us": o.expire_time_us,
    }
    return types_pb2.Order(**fields)


def order_json_from_state(spec: MarketSpec, o: Any) -> dict[str, Any]:
    return order_json(order_from_state(spec, o))

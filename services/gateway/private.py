"""Signed REST endpoints (X-MBX-APIKEY + HMAC signature; services.gateway.signing): order POST / GET /
DELETE, order amend (keepPriority, plus a new price beyond Binance), openOrders GET / DELETE, allOrders,
myTrades, account.

The user is always the key's: the gateway sets user_id on every call from the verified key. Order
commands (place, cancel, amend, cancel-all) go through the aggregated SubmitOrders stream
(services.gateway.entry); reads are unary calls of accounts and history.

Beyond Binance's subset: timeInForce GTD with `goodTillDate` (ms), selfTradePreventionMode EXPIRE_TAKER /
EXPIRE_MAKER / EXPIRE_BOTH (the exchange's cancel taker / maker / both), amend by price.

A MARKET BUY takes quoteOrderQty (spend it) or `quantity` (buy that much): the latter is sent to
accounts as amount + a budget priced from the book with a price cap (services.gateway.market_buy).
Not supported: a MARKET SELL by quoteOrderQty.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from exchange.v1 import accounts_service_pb2 as apb
from exchange.v1 import history_service_pb2 as hpb
from exchange.v1 import types_pb2

from services.clients.errors import ClientError
from services.common import enums
from services.common.errors import Reason
from services.common.limits import MAX_PAGE_SIZE
from services.gateway import formats
from services.gateway.context import Gateway, gateway_of, json_response, now_ms
from services.gateway.errors import NEW_ORDER_REJECTED, REJECTED_API_KEY, ApiError, for_reason
from services.gateway.keys import READ, TRADE
from services.gateway.market_buy import market_buy_budget
from services.gateway.params import Params
from services.gateway.signing import Verified

WEIGHTS = {
    ("POST", "/api/v3/order"): 1,
    ("GET", "/api/v3/order"): 4,
    ("DELETE", "/api/v3/order"): 1,
    ("PUT", "/api/v3/order/amend/keepPriority"): 4,
    ("GET", "/api/v3/openOrders"): 6,
    ("DELETE", "/api/v3/openOrders"): 1,
    ("GET", "/api/v3/allOrders"): 20,
    ("GET", "/api/v3/myTrades"): 20,
    ("GET", "/api/v3/account"): 20,
    ("GET", "/api/v3/strategies"): 10,
}
SIDES = {"BUY": enums.BUY, "SELL": enums.SELL}
TYPES = ["LIMIT", "LIMIT_MAKER", "MARKET"]
TIME_IN_FORCE = {"GTC": enums.GTC, "IOC": enums.IOC, "FOK": enums.FOK, "GTD": enums.GTD}
RESPONSE_TYPES = ["ACK", "RESULT", "FULL"]
STP_MODES = {"NONE": enums.STP_DEFAULT, **formats.STP_BY_NAME}
MAX_OPEN_PAGES = 10


async def signed(request: web.Request, permission: str) -> tuple[Gateway, Params, Verified]:
    """Verify a signed request; (the gateway, its parameters, the key)."""
    gw = gateway_of(request)
    body = await request.text() if request.can_read_body else ""
    query = request.rel_url.raw_query_string
    params = Params.of(query, body)
    verified = gw.verifier.verify(
        request.headers.get("X-MBX-APIKEY"),
        query,
        body,
        params.values,
        endpoint=f"{request.method} {request.path}",
    )
    weight = WEIGHTS.get((request.method, request.path), 1)
    wait, _ = gw.key_limits.take(verified.key.key.api_key, weight, now_ms())
    if wait is not None:
        raise ApiError(
            429,
            -1003,
            "Too much request weight used for this API key; see Retry-After.",
            reason=str(Reason.RATE_LIMITED),
            retry_after_s=wait,
        )
    if permission not in verified.key.key.permissions:
        raise ApiError(
            401,
            REJECTED_API_KEY,
            f"This API key does not have the {permission!r} permission.",
            reason=str(Reason.KEY_PERMISSION_DENIED),
        )
    return gw, params, verified


async def _command(gw: Gateway, command: apb.OrderCommand, *, full: bool = True) -> apb.OrderCommandResult:
    result = await gw.entry.submit(command, full=full)
    if result.code != 0:
        raise for_reason(result.reason, result.message)
    return result


def _order_id(p: Params) -> tuple[int, str]:
    order_id = p.integer("orderId")
    client_id = p.get("origClientOrderId")
    if not order_id and not client_id:
        raise ApiError(
            400,
            -1102,
            "Param 'origClientOrderId' or 'orderId' must be sent, but both were empty/null!",
            reason=str(Reason.INVALID_FIELD),
        )
    return order_id, client_id


def _reject(msg: str) -> ApiError:
    return ApiError(400, NEW_ORDER_REJECTED, msg, reason=str(Reason.INVALID_ORDER))


def place_request(p: Params, user_id: int, market: str) -> apb.PlaceOrderRequest:
    side = SIDES[p.choice("side", SIDES)]
    kind = p.choice("type", TYPES)
    f: dict[str, Any] = {"user_id": user_id, "market": market, "side": side}
    f["client_order_id"] = p.get("newClientOrderId")
    if p.get("selfTradePreventionMode"):
        f["self_trade_prevention"] = STP_MODES[p.choice("selfTradePreventionMode", STP_MODES)]
    quantity, quote_qty = p.get("quantity"), p.get("quoteOrderQty")
    if kind in ("LIMIT", "LIMIT_MAKER"):
        f["type"] = enums.LIMIT
        f["price"] = p.required("price")
        f["amount"] = p.required("quantity")
        if kind == "LIMIT_MAKER":
            f["post_only"] = True
            f["time_in_force"] = enums.GTC
        else:
            f["time_in_force"] = TIME_IN_FORCE[p.choice("timeInForce", TIME_IN_FORCE, "GTC")]
        until = p.millis("goodTillDate")
        if until:
            f["time_in_force"] = enums.GTD
            f["expire_time_us"] = until * 1000
        elif f["time_in_force"] == enums.GTD:
            p.required("goodTillDate")
        return apb.PlaceOrderRequest(**f)
    f["type"] = enums.MARKET
    if bool(quantity) == bool(quote_qty):
        raise _reject("A MARKET order takes exactly one of quantity or quoteOrderQty.")
    if p.get("price"):
        raise _reject("A MARKET order takes no price.")
    if side == enums.BUY:
        if quantity:
            f["amount"] = quantity  # new_order adds the budget (market_buy_budget)
        else:
            f["quote_amount"] = quote_qty
    else:
        if quote_qty:
            raise _reject("A MARKET SELL by quoteOrderQty is not supported: send quantity.")
        f["amount"] = quantity
    return apb.PlaceOrderRequest(**f)


async def new_order(request: web.Request) -> web.Response:
    gw, p, v = await signed(request, TRADE)
    spec = gw.symbols.spec(p.required("symbol"))
    req = place_request(p, v.user_id, spec.symbol)
    if req.type == enums.MARKET and req.side == enums.BUY and req.amount:
        req.quote_amount = await market_buy_budget(gw, spec, v.user_id, req.amount)
    resp_type = p.choice("newOrderRespType", RESPONSE_TYPES, "RESULT")
    result = await _command(gw, apb.OrderCommand(place_order=req), full=resp_type != "ACK")
    body = formats.order_json(result.order, full=resp_type != "ACK")
    if resp_type == "FULL":
        body["fills"] = []
    return json_response(body)


async def _find_order(gw: Gateway, user_id: int, order_id: int, client_id: str) -> types_pb2.Order:
    try:
        resp = await gw.accounts.get_order(
            apb.GetOrderRequest(user_id=user_id, order_id=order_id, client_order_id=client_id)
        )
        return resp.order
    except ClientError as err:
        if err.reason != Reason.ORDER_NOT_FOUND or not order_id:
            raise
        found = await gw.history.get_order_history(hpb.GetOrderHistoryRequest(order_id=order_id))
        if found.order.user_id != user_id:  # never reveal another user's order
            raise
        return found.order


async def get_order(request: web.Request) -> web.Response:
    gw, p, v = await signed(request, READ)
    spec = gw.symbols.spec(p.required("symbol"))
    order_id, client_id = _order_id(p)
    order = await _find_order(gw, v.user_id, order_id, client_id)
    if order.market != spec.symbol:
        raise for_reason(str(Reason.ORDER_NOT_FOUND), "the order is of another symbol")
    return json_response(formats.order_json(order))


async def cancel_order(request: web.Request) -> web.Response:
    gw, p, v = await signed(request, TRADE)
    spec = gw.symbols.spec(p.required("symbol"))
    order_id, client_id = _order_id(p)
    cancel = apb.CancelOrderRequest(
        user_id=v.user_id, market=spec.symbol, order_id=order_id, client_order_id=client_id
    )
    result = await _command(gw, apb.OrderCommand(cancel_order=cancel))
    body = formats.order_json(result.order)
    body["status"] = "CANCELED"  # accepted: the shard applies it (an OrderDone event follows)
    body["origClientOrderId"] = body["clientOrderId"]
    return json_response(body)


async def amend_order(request: web.Request) -> web.Response:
    gw, p, v = await signed(request, TRADE)
    spec = gw.symbols.spec(p.required("symbol"))
    order_id, client_id = _order_id(p)
    new_qty, new_price = p.get("newQty"), p.get("newPrice")
    if not new_qty and not new_price:
        raise ApiError(400, -1102, "Send newQty and/or newPrice.", reason=str(Reason.INVALID_FIELD))
    amend = apb.AmendOrderRequest(
        user_id=v.user_id,
        market=spec.symbol,
        order_id=order_id,
        client_order_id=client_id,
        new_amount=new_qty,
        new_price=new_price,
    )
    result = await _command(gw, apb.OrderCommand(amend_order=amend))
    body = formats.order_json(result.order)
    # Accepted: accounts answers the order as it was; the shard applies the amend (events follow).
    if new_qty:
        body["origQty"] = new_qty
    if new_price:
        body["price"] = new_price
    return json_response({"transactTime": now_ms(), "executionId": 0, "amendedOrder": body})


async def _open_orders(gw: Gateway, user_id: int, market: str) -> list[types_pb2.Order]:
    out: list[types_pb2.Order] = []
    token = ""
    for _ in range(MAX_OPEN_PAGES):
        resp = await gw.accounts.list_open_orders(
            apb.ListOpenOrdersRequest(
                user_id=user_id, market=market, page_size=MAX_PAGE_SIZE, page_token=token
            )
        )
        out.extend(resp.orders)
        token = resp.next_page_token
        if not token:
            break
    return out


async def open_orders(request: web.Request) -> web.Response:
    gw, p, v = await signed(request, READ)
    market = gw.symbols.spec(p.get("symbol")).symbol if p.get("symbol") else ""
    orders = await _open_orders(gw, v.user_id, market)
    return json_response([formats.order_json(o) for o in orders])


async def cancel_open_orders(request: web.Request) -> web.Response:
    gw, p, v = await signed(request, TRADE)
    spec = gw.symbols.spec(p.required("symbol"))
    orders = await _open_orders(gw, v.user_id, spec.symbol)
    cancel = apb.CancelAllOrdersRequest(user_id=v.user_id, market=spec.symbol)
    await _command(gw, apb.OrderCommand(cancel_all_orders=cancel))
    out = []
    for o in orders:
        body = formats.order_json(o)
        body["status"] = "CANCELED"
        body["origClientOrderId"] = body["clientOrderId"]
        out.append(body)
    return json_response(out)


def _time_range(p: Params) -> tuple[int, int]:
    start = p.millis("startTime")
    end = p.millis("endTime")
    return start * 1000, (end + 1) * 1000 if end else 0


async def all_orders(request: web.Request) -> web.Response:
    gw, p, v = await signed(request, READ)
    spec = gw.symbols.spec(p.required("symbol"))
    limit = p.integer("limit", 500, low=1, high=MAX_PAGE_SIZE)
    from_id = p.integer("orderId")
    start, end = _time_range(p)
    finished = await gw.history.list_finished_orders(
        hpb.ListFinishedOrdersRequest(
            user_id=v.user_id, market=spec.symbol, start_time_us=start, end_time_us=end, page_size=limit
        )
    )
    orders = {o.order_id: o for o in finished.orders}
    for o in await _open_orders(gw, v.user_id, spec.symbol):
        if (not start or o.created_time_us >= start) and (not end or o.created_time_us < end):
            orders[o.order_id] = o
    rows = sorted((o for o in orders.values() if o.order_id >= from_id), key=lambda o: o.order_id)
    return json_response([formats.order_json(o) for o in rows[:limit]])


async def my_trades(request: web.Request) -> web.Response:
    gw, p, v = await signed(request, READ)
    spec = gw.symbols.spec(p.required("symbol"))
    limit = p.integer("limit", 500, low=1, high=MAX_PAGE_SIZE)
    order_id = p.integer("orderId")
    from_id = p.integer("fromId")
    rows: list[Any]
    if order_id:
        resp = await gw.history.list_order_trades(
            hpb.ListOrderTradesRequest(order_id=order_id, page_size=limit)
        )
        rows = [t for t in resp.trades if t.user_id == v.user_id]
    else:
        start, end = _time_range(p)
        listed = await gw.history.list_user_trades(
            hpb.ListUserTradesRequest(
                user_id=v.user_id, market=spec.symbol, start_time_us=start, end_time_us=end, page_size=limit
            )
        )
        rows = list(listed.trades)
    rows = sorted(
        (t for t in rows if t.market == spec.symbol and t.trade_id >= from_id), key=lambda t: t.trade_id
    )
    return json_response([formats.user_trade_json(t) for t in rows[:limit]])


async def account(request: web.Request) -> web.Response:
    gw, _, v = await signed(request, READ)
    resp = await gw.accounts.get_balances(apb.GetBalancesRequest(user_id=v.user_id))
    perms = v.key.key.permissions
    return json_response(
        {
            "makerCommission": 0,
            "takerCommission": 0,
            "buyerCommission": 0,
            "sellerCommission": 0,
            "canTrade": TRADE in perms,
            "canWithdraw": False,
            "canDeposit": False,
            "brokered": False,
            "requireSelfTradePrevention": False,
            "preventSor": False,
            "updateTime": now_ms(),
            "accountType": "SPOT",
            "balances": [formats.balance_json(b) for b in resp.balances],
            "permissions": ["SPOT"],
            "uid": v.user_id,
        }
    )


def routes() -> list[web.RouteDef]:
    return [
        web.post("/api/v3/order", new_order),
        web.get("/api/v3/order", get_order),
        web.delete("/api/v3/order", cancel_order),
        web.put("/api/v3/order/amend/keepPriority", amend_order),
        web.get("/api/v3/openOrders", open_orders),
        web.delete("/api/v3/openOrders", cancel_open_orders),
        web.get("/api/v3/allOrders", all_orders),
        web.get("/api/v3/myTrades", my_trades),
        web.get("/api/v3/account", account),
    ]

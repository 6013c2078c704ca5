"""The OpenAPI 3.1 document of the gateway's REST API, served at /openapi.json. Built from one table
(ENDPOINTS): method, path, summary, parameters (name, required), whether it is signed, its weight."""

from __future__ import annotations

from typing import Any

from services.gateway import private, public

P = tuple[str, bool]  # (parameter, required)
SYMBOL: P = ("symbol", True)
OPT_SYMBOL: P = ("symbol", False)
LIMIT: P = ("limit", False)
ORDER_REF: list[P] = [SYMBOL, ("orderId", False), ("origClientOrderId", False)]
TIME_RANGE: list[P] = [("startTime", False), ("endTime", False), LIMIT]

ENDPOINTS: list[tuple[str, str, str, list[P], bool]] = [
    ("GET", "/api/v3/ping", "Test connectivity.", [], False),
    ("GET", "/api/v3/time", "Server time (ms).", [], False),
    (
        "GET",
        "/api/v3/exchangeInfo",
        "Markets with PRICE_FILTER, LOT_SIZE and NOTIONAL filters.",
        [OPT_SYMBOL, ("symbols", False)],
        False,
    ),
    (
        "GET",
        "/api/v3/depth",
        "Order book; lastUpdateId continues in the WebSocket depth stream.",
        [SYMBOL, LIMIT],
        False,
    ),
    ("GET", "/api/v3/trades", "Recent trades, oldest first.", [SYMBOL, LIMIT], False),
    (
        "GET",
        "/api/v3/aggTrades",
        "Recent trades as aggregates (one trade each).",
        [SYMBOL, ("fromId", False), *TIME_RANGE],
        False,
    ),
    (
        "GET",
        "/api/v3/klines",
        "K-lines: 1m 5m 15m 1h 4h 1d 1w.",
        [SYMBOL, ("interval", True), *TIME_RANGE],
        False,
    ),
    ("GET", "/api/v3/ticker/24hr", "Rolling 24 h statistics.", [OPT_SYMBOL], False),
    ("GET", "/api/v3/ticker/price", "Last price.", [OPT_SYMBOL], False),
    ("GET", "/api/v3/ticker/bookTicker", "Best bid and ask with quantities.", [OPT_SYMBOL], False),
    (
        "POST",
        "/api/v3/order",
        "Place an order: LIMIT (GTC/IOC/FOK, GTD with goodTillDate), LIMIT_MAKER, "
        "MARKET (SELL by quantity, BUY by quoteOrderQty or by quantity: then it spends at most best ask "
        "x (1 + a price cap) x quantity); selfTradePreventionMode EXPIRE_TAKER/MAKER/BOTH.",
        [
            SYMBOL,
            ("side", True),
            ("type", True),
            ("timeInForce", False),
            ("quantity", False),
            ("quoteOrderQty", False),
            ("price", False),
            ("newClientOrderId", False),
            ("goodTillDate", False),
            ("selfTradePreventionMode", False),
            ("newOrderRespType", False),
        ],
        True,
    ),
    ("GET", "/api/v3/order", "An order (open or finished).", ORDER_REF, True),
    ("DELETE", "/api/v3/order", "Cancel an order.", ORDER_REF, True),
    (
        "PUT",
        "/api/v3/order/amend/keepPriority",
        "Amend: lower quantity (keeps priority), or a new price.",
        [*ORDER_REF, ("newQty", False), ("newPrice", False)],
        True,
    ),
    ("GET", "/api/v3/openOrders", "Open orders.", [OPT_SYMBOL], True),
    ("DELETE", "/api/v3/openOrders", "Cancel every open order of a symbol.", [SYMBOL], True),
    (
        "GET",
        "/api/v3/allOrders",
        "Open and finished orders of a symbol.",
        [SYMBOL, ("orderId", False), *TIME_RANGE],
        True,
    ),
    (
        "GET",
        "/api/v3/myTrades",
        "The key's user's trades.",
        [SYMBOL, ("orderId", False), ("fromId", False), *TIME_RANGE],
        True,
    ),
    ("GET", "/api/v3/account", "Balances (free, locked) and permissions.", [], True),
    (
        "POST",
        "/api/v3/strategy",
        "Create a hosted strategy (type GRID, DCA or RECURRING; config as JSON).",
        [SYMBOL, ("type", True), ("config", True), ("clientStrategyId", False)],
        True,
    ),
    (
        "POST",
        "/api/v3/strategy/preview",
        "Preview a grid or DCA plan.",
        [SYMBOL, ("type", True), ("config", True), ("price", False)],
        True,
    ),
    (
        "GET",
        "/api/v3/strategies",
        "The user's strategies with their reports.",
        [LIMIT, ("pageToken", False)],
        True,
    ),
    ("GET", "/api/v3/strategy", "A strategy with its report.", [("strategyId", True)], True),
    ("POST", "/api/v3/strategy/pause", "Pause a strategy.", [("strategyId", True)], True),
    ("POST", "/api/v3/strategy/resume", "Resume a strategy.", [("strategyId", True)], True),
    (
        "DELETE",
        "/api/v3/strategy",
        "Stop a strategy (mode KEEP_ORDERS, CANCEL_ORDERS, CANCEL_AND_SELL).",
        [("strategyId", True), ("mode", False), ("maxSlippage", False)],
        True,
    ),
]
SIGNED_PARAMS: list[P] = [("timestamp", True), ("recvWindow", False), ("signature", True)]


def document() -> dict[str, Any]:
    paths: dict[str, Any] = {}
    for method, path, summary, params, signed in ENDPOINTS:
        weight = private.WEIGHTS.get((method, path), 1) if signed else public.WEIGHTS.get(path, 1)
        op: dict[str, Any] = {
            "summary": summary,
            "x-weight": weight,
            "parameters": [
                {"name": n, "in": "query", "required": r, "schema": {"type": "string"}}
                for n, r in [*params, *(SIGNED_PARAMS if signed else [])]
            ],
            "responses": {
                "200": {"description": "OK", "content": {"application/json": {}}},
                "4XX": {
                    "description": "Refused",
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
                },
            },
        }
        if signed:
            op["security"] = [{"ApiKey": []}]
        paths.setdefault(path, {})[method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Ostrakon gateway",
            "version": "1",
            "description": (
                "A Binance-spot-compatible REST subset. Signed endpoints: HMAC-SHA256 of query "
                "string + body under the key's secret in `signature`, the key in X-MBX-APIKEY, "
                "`timestamp` within `recvWindow` ms. Decimal strings for every price and quantity. "
                "Rate limits: request weight per minute per address and per key (429 with "
                "Retry-After). WebSocket: /ws, /stream, /ws-api/v3 (user data)."
            ),
        },
        "paths": paths,
        "components": {
            "securitySchemes": {"ApiKey": {"type": "apiKey", "in": "header", "name": "X-MBX-APIKEY"}},
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["code", "msg"],
                    "properties": {
                        "code": {"type": "integer"},
                        "msg": {"type": "string"},
                        "reason": {"type": "string", "description": "the exchange's ErrorInfo reason"},
                        "detail": {"type": "string"},
                    },
                }
            },
        },
    }

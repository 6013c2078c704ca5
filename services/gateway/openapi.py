"""The OpenAPI 3.1 document of the gateway, served at /openapi.json. Built from one table (ENDPOINTS):
method, path, summary, parameters (name, required) and how it is authenticated (NONE; SIGNED: HMAC
signature and X-MBX-APIKEY; KEY: X-MBX-APIKEY alone, as Binance's listenKey endpoints), with the weight of
each /api endpoint; plus the routes that are not REST (OTHER: the web page, this document, the WebSocket
endpoints, answered 101 Switching Protocols). tests/gateway/test_openapi.py checks that every route the
aiohttp application registers is here and nothing else, so the document cannot drift from the app."""

from __future__ import annotations

from typing import Any

from services.gateway import private, public

P = tuple[str, bool]  # (parameter, required)
SYMBOL: P = ("symbol", True)
OPT_SYMBOL: P = ("symbol", False)
LIMIT: P = ("limit", False)
ORDER_REF: list[P] = [SYMBOL, ("orderId", False), ("origClientOrderId", False)]
TIME_RANGE: list[P] = [("startTime", False), ("endTime", False), LIMIT]

NONE, SIGNED, KEY = "none", "signed", "key"
LISTEN_KEY: P = ("listenKey", True)

ENDPOINTS: list[tuple[str, str, str, list[P], str]] = [
    ("GET", "/api/v3/ping", "Test connectivity.", [], NONE),
    ("GET", "/api/v3/time", "Server time (ms).", [], NONE),
    (
        "GET",
        "/api/v3/exchangeInfo",
        "Markets with PRICE_FILTER, LOT_SIZE and NOTIONAL filters.",
        [OPT_SYMBOL, ("symbols", False)],
        NONE,
    ),
    (
        "GET",
        "/api/v3/depth",
        "Order book; lastUpdateId continues in the WebSocket depth stream.",
        [SYMBOL, LIMIT],
        NONE,
    ),
    ("GET", "/api/v3/trades", "Recent trades, oldest first.", [SYMBOL, LIMIT], NONE),
    (
        "GET",
        "/api/v3/aggTrades",
        "Recent trades as aggregates (one trade each).",
        [SYMBOL, ("fromId", False), *TIME_RANGE],
        NONE,
    ),
    (
        "GET",
        "/api/v3/klines",
        "K-lines: 1m 5m 15m 1h 4h 1d 1w.",
        [SYMBOL, ("interval", True), *TIME_RANGE],
        NONE,
    ),
    ("GET", "/api/v3/ticker/24hr", "Rolling 24 h statistics.", [OPT_SYMBOL], NONE),
    ("GET", "/api/v3/ticker/price", "Last price.", [OPT_SYMBOL], NONE),
    ("GET", "/api/v3/ticker/bookTicker", "Best bid and ask with quantities.", [OPT_SYMBOL], NONE),
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
        SIGNED,
    ),
    ("GET", "/api/v3/order", "An order (open or finished).", ORDER_REF, SIGNED),
    ("DELETE", "/api/v3/order", "Cancel an order.", ORDER_REF, SIGNED),
    (
        "PUT",
        "/api/v3/order/amend/keepPriority",
        "Amend: lower quantity (keeps priority), or a new price.",
        [*ORDER_REF, ("newQty", False), ("newPrice", False)],
        SIGNED,
    ),
    ("GET", "/api/v3/openOrders", "Open orders.", [OPT_SYMBOL], SIGNED),
    ("DELETE", "/api/v3/openOrders", "Cancel every open order of a symbol.", [SYMBOL], SIGNED),
    (
        "GET",
        "/api/v3/allOrders",
        "Open and finished orders of a symbol.",
        [SYMBOL, ("orderId", False), *TIME_RANGE],
        SIGNED,
    ),
    (
        "GET",
        "/api/v3/myTrades",
        "The key's user's trades.",
        [SYMBOL, ("orderId", False), ("fromId", False), *TIME_RANGE],
        SIGNED,
    ),
    ("GET", "/api/v3/account", "Balances (free, locked) and permissions.", [], SIGNED),
    (
        "POST",
        "/api/v3/strategy",
        "Create a hosted strategy (type GRID, DCA or RECURRING; config as JSON).",
        [SYMBOL, ("type", True), ("config", True), ("clientStrategyId", False)],
        SIGNED,
    ),
    (
        "POST",
        "/api/v3/strategy/preview",
        "Preview a grid or DCA plan.",
        [SYMBOL, ("type", True), ("config", True), ("price", False)],
        SIGNED,
    ),
    (
        "GET",
        "/api/v3/strategies",
        "The user's strategies with their reports.",
        [LIMIT, ("pageToken", False)],
        SIGNED,
    ),
    ("GET", "/api/v3/strategy", "A strategy with its report.", [("strategyId", True)], SIGNED),
    ("POST", "/api/v3/strategy/pause", "Pause a strategy.", [("strategyId", True)], SIGNED),
    ("POST", "/api/v3/strategy/resume", "Resume a strategy.", [("strategyId", True)], SIGNED),
    (
        "DELETE",
        "/api/v3/strategy",
        "Stop a strategy (mode KEEP_ORDERS, CANCEL_ORDERS, CANCEL_AND_SELL).",
        [("strategyId", True), ("mode", False), ("maxSlippage", False)],
        SIGNED,
    ),
    (
        "POST",
        "/api/v3/userDataStream",
        "Open a listenKey user data stream (X-MBX-APIKEY of a key with the read permission, no "
        "signature): /ws/<listenKey> then sends the key's user's executionReport and "
        "outboundAccountPosition events; it expires 60 minutes after its last keepalive.",
        [],
        KEY,
    ),
    ("PUT", "/api/v3/userDataStream", "Keep a listenKey alive for 60 more minutes.", [LISTEN_KEY], KEY),
    ("DELETE", "/api/v3/userDataStream", "Close a listenKey (its streams are closed).", [LISTEN_KEY], KEY),
]
SIGNED_PARAMS: list[P] = [("timestamp", True), ("recvWindow", False), ("signature", True)]

# The routes that are not REST: (method, path, summary, WebSocket). aiohttp's `/ws/{listen_key}` and
# `/ws/{tail}` are one templated path here (OpenAPI allows no two paths that differ only in names).
OTHER: list[tuple[str, str, str, bool]] = [
    ("GET", "/", "The web page (market list, book, trades, chart, orders, balances, strategies).", False),
    ("GET", "/static/app.js", "The web page's bundled script.", False),
    ("GET", "/openapi.json", "This document.", False),
    (
        "GET",
        "/ws",
        "WebSocket market streams, raw payloads; SUBSCRIBE / UNSUBSCRIBE / LIST_SUBSCRIPTIONS messages.",
        True,
    ),
    (
        "GET",
        "/ws/{path}",
        "WebSocket: /ws/<listenKey> is a listenKey's user data stream; /ws/<stream>/<stream>... the "
        "market streams named in the path (raw payloads).",
        True,
    ),
    ("GET", "/stream", "WebSocket combined market streams (?streams=a/b): {stream, data}.", True),
    (
        "GET",
        "/ws-api/v3",
        "WebSocket API: ping, time, userDataStream.subscribe.signature (order and balance events).",
        True,
    ),
]


def _weight(method: str, path: str) -> int:
    """As services.gateway.app.weight_of charges it."""
    return public.WEIGHTS.get(path) or private.WEIGHTS.get((method, path), 1)


def document() -> dict[str, Any]:
    paths: dict[str, Any] = {}
    refused = {
        "description": "Refused",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }
    for method, path, summary, params, auth in ENDPOINTS:
        op: dict[str, Any] = {
            "summary": summary,
            "x-weight": _weight(method, path),
            "parameters": [
                {"name": n, "in": "query", "required": r, "schema": {"type": "string"}}
                for n, r in [*params, *(SIGNED_PARAMS if auth == SIGNED else [])]
            ],
            "responses": {
                "200": {"description": "OK", "content": {"application/json": {}}},
                "4XX": refused,
            },
        }
        if auth != NONE:
            op["security"] = [{"ApiKey": []}]
        paths.setdefault(path, {})[method.lower()] = op
    for method, path, summary, websocket in OTHER:
        op = {"summary": summary, "responses": {"200": {"description": "OK"}}}
        if websocket:
            op["x-websocket"] = True
            op["responses"] = {"101": {"description": "Switching Protocols (WebSocket)"}, "4XX": refused}
        if "{path}" in path:
            op["parameters"] = [
                {"name": "path", "in": "path", "required": True, "schema": {"type": "string"}}
            ]
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

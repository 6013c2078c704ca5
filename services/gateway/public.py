"""Public REST endpoints (no key): ping, time, exchangeInfo, depth, trades, klines, ticker/24hr,
ticker/price, ticker/bookTicker. Market data comes from the market service (services.clients);
`depth` carries the market service's depth sequence as lastUpdateId (the WebSocket depth stream's U/u
continue it)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp import web
from exchange.v1 import market_service_pb2 as kpb

from services.common.limits import MAX_DEPTH_LEVELS, MAX_KLINES, MAX_RECENT_TRADES
from services.gateway import formats
from services.gateway.context import gateway_of, json_response, now_ms
from services.gateway.errors import BAD_INTERVAL, ApiError
from services.gateway.params import Params
from services.gateway.symbols import binance_symbol, exchange_info

# Request weights (Binance's, roughly): the limiter charges them before the handler runs.
WEIGHTS = {
    "/api/v3/ping": 1,
    "/api/v3/time": 1,
    "/api/v3/exchangeInfo": 20,
    "/api/v3/depth": 5,
    "/api/v3/trades": 25,
    "/api/v3/aggTrades": 4,
    "/api/v3/klines": 2,
    "/api/v3/ticker/24hr": 2,
    "/api/v3/ticker/price": 2,
    "/api/v3/ticker/bookTicker": 2,
}
ALL_SYMBOLS_WEIGHT = 40


def params_of(request: web.Request) -> Params:
    return Params.of(request.query_string)


async def ping(request: web.Request) -> web.Response:
    return json_response({})


async def server_time(request: web.Request) -> web.Response:
    return json_response({"serverTime": now_ms()})


async def info(request: web.Request) -> web.Response:
    gw = gateway_of(request)
    p = params_of(request)
    only: list[str] = []
    if p.get("symbol"):
        only = [p.get("symbol")]
    elif p.get("symbols"):
        try:
            listed = json.loads(p.get("symbols"))
        except ValueError:
            listed = None
        if not isinstance(listed, list) or not all(isinstance(s, str) for s in listed):
            raise ApiError(400, -1100, "symbols must be a JSON list of symbols.", reason="INVALID_FIELD")
        only = listed
    return json_response(exchange_info(gw.symbols, now_ms(), gw.rate_limits(), only))


async def depth(request: web.Request) -> web.Response:
    gw = gateway_of(request)
    p = params_of(request)
    spec = gw.symbols.spec(p.required("symbol"))
    limit = p.integer("limit", 100, low=1, high=MAX_DEPTH_LEVELS)
    resp = await gw.market.get_market_depth(kpb.GetMarketDepthRequest(market=spec.symbol, limit=limit))
    return json_response(
        {"lastUpdateId": resp.sequence, "bids": formats.levels(resp.bids), "asks": formats.levels(resp.asks)}
    )


async def trades(request: web.Request) -> web.Response:
    gw = gateway_of(request)
    p = params_of(request)
    spec = gw.symbols.spec(p.required("symbol"))
    limit = p.integer("limit", 500, low=1, high=MAX_RECENT_TRADES)
    resp = await gw.market.list_recent_trades(kpb.ListRecentTradesRequest(market=spec.symbol, limit=limit))
    rows = sorted(resp.trades, key=lambda t: t.trade_id)  # Binance: oldest first
    return json_response([formats.public_trade_json(t) for t in rows])


async def agg_trades(request: web.Request) -> web.Response:
    """Binance's compressed trades; here every trade is its own aggregate (ccxt's default fetchTrades)."""
    gw = gateway_of(request)
    p = params_of(request)
    spec = gw.symbols.spec(p.required("symbol"))
    limit = p.integer("limit", 500, low=1, high=MAX_RECENT_TRADES)
    start, end, from_id = p.millis("startTime"), p.millis("endTime"), p.integer("fromId")
    resp = await gw.market.list_recent_trades(
        kpb.ListRecentTradesRequest(market=spec.symbol, limit=MAX_RECENT_TRADES)
    )
    rows = sorted(
        (
            t
            for t in resp.trades
            if t.trade_id >= from_id
            and (not start or t.time_us >= start * 1000)
            and (not end or t.time_us <= end * 1000 + 999)
        ),
        key=lambda t: t.trade_id,
    )
    return json_response([formats.agg_trade_json(t) for t in rows[-limit:]])


async def klines(request: web.Request) -> web.Response:
    gw = gateway_of(request)
    p = params_of(request)
    spec = gw.symbols.spec(p.required("symbol"))
    interval = p.required("interval")
    if interval not in formats.KLINE_INTERVALS:
        raise ApiError(
            400,
            BAD_INTERVAL,
            f"Invalid interval; one of {', '.join(formats.KLINE_INTERVALS)}.",
            reason="INVALID_FIELD",
        )
    limit = p.integer("limit", 500, low=1, high=MAX_KLINES)
    start = p.millis("startTime")
    end = p.millis("endTime")
    req = kpb.GetKlinesRequest(
        market=spec.symbol,
        interval=formats.KLINE_INTERVALS[interval],
        start_time_us=start * 1000,
        end_time_us=(end + 1) * 1000 if end else 0,
        limit=limit,
    )
    resp = await gw.market.get_klines(req)
    rows = sorted(resp.klines, key=lambda k: k.open_time_us)
    return json_response([formats.kline_row(k, interval) for k in rows])


async def _tickers(request: web.Request) -> list[tuple[Any, kpb.Ticker]]:
    gw = gateway_of(request)
    p = params_of(request)
    symbol = p.get("symbol")
    if symbol:
        spec = gw.symbols.spec(symbol)
        resp = await gw.market.get_ticker(kpb.GetTickerRequest(market=spec.symbol))
        return [(spec, resp.ticker)]
    listed = await gw.market.list_tickers()
    by_market = {t.market: t for t in listed.tickers}
    return [(s, by_market.get(s.symbol, kpb.Ticker(market=s.symbol))) for s in gw.symbols.specs()]


async def _best(request: web.Request, market: str) -> tuple[str, str, str, str]:
    resp = await gateway_of(request).market.get_market_depth(
        kpb.GetMarketDepthRequest(market=market, limit=1)
    )
    bid = resp.bids[0] if resp.bids else None
    ask = resp.asks[0] if resp.asks else None
    return (
        bid.price if bid else "0",
        bid.amount if bid else "0",
        ask.price if ask else "0",
        ask.amount if ask else "0",
    )


async def ticker_24hr(request: web.Request) -> web.Response:
    rows = await _tickers(request)
    bests = await asyncio.gather(*(_best(request, spec.symbol) for spec, _ in rows))
    out = []
    for (spec, t), (_, bid_qty, _, ask_qty) in zip(rows, bests, strict=True):
        out.append(formats.ticker_json(spec, t, bid_qty=bid_qty, ask_qty=ask_qty))
    single = bool(params_of(request).get("symbol"))
    return json_response(out[0] if single else out)


async def ticker_price(request: web.Request) -> web.Response:
    rows = await _tickers(request)
    out = [{"symbol": binance_symbol(s.symbol), "price": formats.dec(t.last_price)} for s, t in rows]
    return json_response(out[0] if params_of(request).get("symbol") else out)


async def book_ticker(request: web.Request) -> web.Response:
    gw = gateway_of(request)
    p = params_of(request)
    specs = [gw.symbols.spec(p.get("symbol"))] if p.get("symbol") else list(gw.symbols.specs())
    bests = await asyncio.gather(*(_best(request, s.symbol) for s in specs))
    out = [
        {
            "symbol": binance_symbol(s.symbol),
            "bidPrice": b[0],
            "bidQty": b[1],
            "askPrice": b[2],
            "askQty": b[3],
        }
        for s, b in zip(specs, bests, strict=True)
    ]
    return json_response(out[0] if p.get("symbol") else out)


def routes() -> list[web.RouteDef]:
    return [
        web.get("/api/v3/ping", ping),
        web.get("/api/v3/time", server_time),
        web.get("/api/v3/exchangeInfo", info),
        web.get("/api/v3/depth", depth),
        web.get("/api/v3/trades", trades),
        web.get("/api/v3/aggTrades", agg_trades),
        web.get("/api/v3/klines", klines),
        web.get("/api/v3/ticker/24hr", ticker_24hr),
        web.get("/api/v3/ticker/price", ticker_price),
        web.get("/api/v3/ticker/bookTicker", book_ticker),
    ]

"""WebSocket streams of the gateway against real processes: SUBSCRIBE / UNSUBSCRIBE, raw and combined
streams, depth diffs whose U/u continue REST's lastUpdateId, trades, klines, tickers, book tickers, slow
consumers dropped; and stock ccxt.pro's watchTrades, watchOrderBook, watchTicker and watchOHLCV."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import aiohttp
import ccxt.pro
import pytest

from services.gateway.ws import Connection
from tests.gateway.conftest import Env, Rest, new_user
from tests.gateway.test_ccxt import local_urls

pytestmark = pytest.mark.slow


def limit(t: Rest, side: str, qty: str, price: str, symbol: str = "ETHUSDT") -> Any:
    a = t.signed(
        "POST",
        "/api/v3/order",
        {"symbol": symbol, "side": side, "type": "LIMIT", "quantity": qty, "price": price},
    )
    assert a.status == 200, a.body
    return a.body


async def recv(ws: aiohttp.ClientWebSocketResponse, check: Any, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        assert left > 0, "no matching message"
        msg = await ws.receive(timeout=left)
        assert msg.type == aiohttp.WSMsgType.TEXT, msg
        data = json.loads(msg.data)
        if check(data):
            return data


def test_streams_subscribe_and_depth_continues_the_rest_snapshot(env: Env) -> None:
    maker = env.trader(new_user(), USDT="1000000", ETH="100")
    taker = env.trader(new_user(), USDT="1000000", ETH="100")
    base = env.base.replace("http", "ws")

    async def run() -> None:
        async with aiohttp.ClientSession() as s:
            ws = await s.ws_connect(f"{base}/ws")
            await ws.send_json(
                {
                    "method": "SUBSCRIBE",
                    "params": ["ethusdt@depth@100ms", "ethusdt@trade", "ethusdt@bookTicker"],
                    "id": 1,
                }
            )
            assert await recv(ws, lambda d: "id" in d) == {"result": None, "id": 1}
            await ws.send_json({"method": "LIST_SUBSCRIPTIONS", "id": 2})
            listed = await recv(ws, lambda d: d.get("id") == 2)
            assert listed["result"] == ["ethusdt@bookTicker", "ethusdt@depth@100ms", "ethusdt@trade"]
            await ws.send_json({"method": "SUBSCRIBE", "params": ["nosuch@trade"], "id": 3})
            assert (await recv(ws, lambda d: d.get("id") == 3))["error"]["code"] == 2

            await asyncio.sleep(0.3)
            snap = env.rest().get("/api/v3/depth", symbol="ETHUSDT", limit=1000).body
            book = {"b": dict(map(tuple, snap["bids"])), "a": dict(map(tuple, snap["asks"]))}
            nonce = snap["lastUpdateId"]
            await asyncio.to_thread(limit, maker, "SELL", "1.5", "2000.5")
            await asyncio.to_thread(limit, maker, "SELL", "2", "2001")
            await asyncio.to_thread(limit, maker, "BUY", "1", "1999")
            await asyncio.to_thread(limit, taker, "BUY", "0.5", "2000.5")
            applied = 0
            deadline = time.monotonic() + 10
            trade = None
            while time.monotonic() < deadline:
                d = await recv(ws, lambda d: d.get("e") in ("depthUpdate", "trade"))
                if d["e"] == "trade":
                    trade = d
                    continue
                if d["u"] <= nonce:
                    continue
                if applied == 0:
                    assert d["U"] <= nonce + 1 <= d["u"], (d, nonce)
                else:
                    assert d["U"] == nonce + 1, (d, nonce)
                for side in ("b", "a"):
                    for p, q in d[side]:
                        if q == "0":
                            book[side].pop(p, None)
                        else:
                            book[side][p] = q
                nonce = d["u"]
                applied += 1
                if book["a"].get("2000.5") == "1" and book["b"].get("1999") == "1" and trade:
                    break
            assert (
                book["a"].get("2000.5") == "1"
                and book["a"].get("2001") == "2"
                and book["b"].get("1999") == "1"
            )
            assert trade is not None and (trade["s"], trade["p"], trade["q"], trade["m"]) == (
                "ETHUSDT",
                "2000.5",
                "0.5",
                False,
            )
            rest = env.rest().get("/api/v3/depth", symbol="ETHUSDT", limit=1000).body
            assert {p: q for p, q in rest["asks"]} == book["a"] and {p: q for p, q in rest["bids"]} == book[
                "b"
            ]

            await ws.send_json({"method": "UNSUBSCRIBE", "params": ["ethusdt@trade"], "id": 4})
            assert await recv(ws, lambda d: d.get("id") == 4) == {"result": None, "id": 4}
            await ws.close()

            # Combined streams: every payload wrapped with its stream's name.
            combined = await s.ws_connect(
                f"{base}/stream?streams=ethusdt@kline_1m/ethusdt@miniTicker/ethusdt@ticker"
            )
            await asyncio.to_thread(limit, taker, "BUY", "0.25", "2000.5")
            kline = await recv(
                combined, lambda d: d["stream"] == "ethusdt@kline_1m" and d["data"]["k"]["c"] == "2000.5"
            )
            assert kline["data"]["k"]["i"] == "1m" and kline["data"]["s"] == "ETHUSDT"
            mini = await recv(combined, lambda d: d["stream"] == "ethusdt@miniTicker")
            assert mini["data"]["e"] == "24hrMiniTicker" and mini["data"]["c"] == "2000.5"
            await combined.close()

            # Streams named in the path, raw payloads: the best bid and ask when they change.
            raw = await s.ws_connect(f"{base}/ws/ethusdt@bookTicker")
            await asyncio.sleep(0.2)
            await asyncio.to_thread(limit, maker, "BUY", "0.5", "1999.5")
            bt = await recv(raw, lambda d: d.get("b") == "1999.5")
            assert (bt["s"], bt["B"], bt["a"], bt["A"]) == ("ETHUSDT", "0.5", "2000.5", "0.75")
            await raw.close()

    asyncio.run(run())


def test_a_slow_consumer_is_dropped_with_a_reason() -> None:
    class StuckSocket:
        closed_with: tuple[int, bytes] | None = None

        async def send_str(self, text: str) -> None:
            await asyncio.Event().wait()  # never drains

        async def close(self, *, code: int, message: bytes) -> None:
            self.closed_with = (code, message)

    async def run() -> StuckSocket:
        sock = StuckSocket()
        conn = Connection(sock, combined=False, buffer=3)  # type: ignore[arg-type]
        writer = asyncio.create_task(conn.writer())
        for i in range(5):
            conn.offer("x@trade", {"i": i})
            await asyncio.sleep(0)
        await asyncio.sleep(0.01)
        writer.cancel()
        assert conn.closed and conn.dropped_reason.startswith("slow consumer")
        return sock

    sock = asyncio.run(run())
    assert (
        sock.closed_with is not None
        and sock.closed_with[0] == 1008
        and b"slow consumer" in sock.closed_with[1]
    )


def test_ccxt_pro_watches_public_streams(env: Env) -> None:
    maker = env.trader(new_user(), USDT="1000000", SOL="1000")
    taker = env.trader(new_user(), USDT="1000000", SOL="1000")

    async def run() -> None:
        ex = ccxt.pro.binance(
            {
                "enableRateLimit": False,
                "options": {
                    "fetchMarkets": {"types": ["spot"]},
                    "fetchCurrencies": False,
                    "fetchMargins": False,
                    "defaultType": "spot",
                },
            }
        )
        ex.urls["api"] = local_urls(ex.urls["api"], env.base)
        try:
            await ex.load_markets()
            await asyncio.to_thread(limit, maker, "SELL", "3", "151", "SOLUSDT")
            book_task = asyncio.create_task(ex.watch_order_book("SOL/USDT"))
            book = await asyncio.wait_for(book_task, 15)
            await asyncio.to_thread(limit, maker, "SELL", "1", "152.5", "SOLUSDT")
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and [152.5, 1.0] not in book["asks"]:
                book = await asyncio.wait_for(ex.watch_order_book("SOL/USDT"), 10)
            assert [152.5, 1.0] in book["asks"] and [151.0, 3.0] in book["asks"]

            tickers: list[Any] = []

            async def follow_tickers() -> None:
                while True:
                    tickers.append(await ex.watch_ticker("SOL/USDT"))

            follower = asyncio.create_task(follow_tickers())
            trades_task = asyncio.create_task(ex.watch_trades("SOL/USDT"))
            ohlcv_task = asyncio.create_task(ex.watch_ohlcv("SOL/USDT", "1m"))
            await asyncio.sleep(0.5)
            await asyncio.to_thread(limit, taker, "BUY", "2", "151", "SOLUSDT")
            trades = await asyncio.wait_for(trades_task, 10)
            assert trades[-1]["price"] == 151 and trades[-1]["amount"] == 2 and trades[-1]["side"] == "buy"
            candles = await asyncio.wait_for(ohlcv_task, 10)
            assert candles[-1][4] == 151 and candles[-1][5] == 2
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and not any(t["last"] == 151 for t in tickers):
                await asyncio.sleep(0.05)
            follower.cancel()
            last = [t for t in tickers if t["last"] == 151][-1]
            assert last["symbol"] == "SOL/USDT" and last["baseVolume"] == 2 and last["quoteVolume"] == 302
        finally:
            await ex.close()

    asyncio.run(run())


def test_ccxt_pro_watches_orders_and_balance(env: Env) -> None:
    user = new_user()
    trader = env.trader(user, USDT="50000", DOGE="10000")
    other = env.trader(new_user(), USDT="50000", DOGE="10000")

    async def run() -> None:
        ex = ccxt.pro.binance(
            {
                "apiKey": trader.key,
                "secret": trader.secret,
                "enableRateLimit": False,
                "options": {
                    "fetchMarkets": {"types": ["spot"]},
                    "fetchCurrencies": False,
                    "fetchMargins": False,
                    "defaultType": "spot",
                },
            }
        )
        ex.urls["api"] = local_urls(ex.urls["api"], env.base)
        try:
            await ex.load_markets()
            orders_task = asyncio.create_task(ex.watch_orders("DOGE/USDT"))
            balance_task = asyncio.create_task(ex.watch_balance())
            await asyncio.sleep(1.0)
            await asyncio.to_thread(limit, trader, "SELL", "100", "0.1", "DOGEUSDT")
            orders = await asyncio.wait_for(orders_task, 10)
            assert (
                orders[-1]["status"] == "open" and orders[-1]["amount"] == 100 and orders[-1]["price"] == 0.1
            )
            balance = await asyncio.wait_for(balance_task, 10)
            assert balance["DOGE"]["free"] == 9900 and balance["DOGE"]["used"] == 100
            fills: list[Any] = []

            async def follow() -> None:
                while True:
                    fills.extend(await ex.watch_orders("DOGE/USDT"))

            follower = asyncio.create_task(follow())
            await asyncio.sleep(0.2)
            await asyncio.to_thread(limit, other, "BUY", "100", "0.1", "DOGEUSDT")
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and not any(o["status"] == "closed" for o in fills):
                await asyncio.sleep(0.05)
            follower.cancel()
            closed = [o for o in fills if o["status"] == "closed"][-1]
            assert closed["filled"] == 100 and closed["cost"] == 10
        finally:
            await ex.close()

    asyncio.run(run())


def test_user_data_stream_refuses_bad_signatures(env: Env) -> None:
    trader = env.trader(new_user(), USDT="1")
    base = env.base.replace("http", "ws")

    async def run() -> None:
        async with aiohttp.ClientSession() as s:
            ws = await s.ws_connect(f"{base}/ws-api/v3")
            params = {"apiKey": trader.key, "timestamp": int(time.time() * 1000), "signature": "0" * 64}
            await ws.send_json({"id": "a", "method": "userDataStream.subscribe.signature", "params": params})
            refused = await recv(ws, lambda d: d.get("id") == "a")
            assert refused["status"] == 400 and refused["error"]["code"] == -1022
            await ws.send_json({"id": "b", "method": "ping"})
            assert (await recv(ws, lambda d: d.get("id") == "b"))["status"] == 200
            await ws.close()

    asyncio.run(run())

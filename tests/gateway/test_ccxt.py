"""Stock ccxt (PyPI) trades through the gateway: `ccxt.binance` with its REST URLs pointed at it."""

from __future__ import annotations

from typing import Any

import ccxt
import pytest

from tests.gateway.conftest import Env, new_user, wait_for

pytestmark = pytest.mark.slow

SYMBOL = "BTC/USDT"


def binance(env: Env, key: str = "", secret: str = "") -> Any:
    ex = ccxt.binance(
        {
            "apiKey": key,
            "secret": secret,
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
    return ex


def local_urls(urls: Any, base: str) -> Any:
    """Every URL of the exchange class pointed at the gateway, so that no call can leave this machine
    (an endpoint the gateway lacks answers 404 instead)."""
    if isinstance(urls, dict):
        return {k: local_urls(v, base) for k, v in urls.items()}
    if isinstance(urls, str) and "://" in urls:
        path = urls.split("://", 1)[1].partition("/")[2]
        scheme = "ws" if urls.startswith("ws") else "http"
        return f"{scheme}://{base.split('://', 1)[1]}/{path}"
    return urls


def test_ccxt_binance_trades_through_the_gateway(env: Env) -> None:
    maker_user, taker_user = new_user(), new_user()
    maker = env.trader(maker_user, USDT="100000", BTC="10")
    taker = env.trader(taker_user, USDT="100000", BTC="10")
    mx = binance(env, maker.key, maker.secret)
    tx = binance(env, taker.key, taker.secret)

    markets = mx.load_markets()
    btc = markets[SYMBOL]
    assert btc["id"] == "BTCUSDT" and btc["spot"] and btc["active"]
    assert btc["precision"]["price"] == 0.01 and btc["precision"]["amount"] == 0.00001
    assert btc["limits"]["amount"]["min"] == 0.0001 and btc["limits"]["cost"]["min"] == 5

    # A resting sell, then a limit buy that takes part of it.
    sell = mx.create_order(SYMBOL, "limit", "sell", 0.5, 30000)
    assert sell["status"] == "open" and sell["id"]
    wait_for(lambda: tx.fetch_order_book(SYMBOL)["asks"])
    book = tx.fetch_order_book(SYMBOL, 5)
    assert book["asks"][0] == [30000.0, 0.5] and book["nonce"] > 0
    buy = tx.create_order(SYMBOL, "limit", "buy", 0.2, 30000)
    wait_for(lambda: tx.fetch_order(buy["id"], SYMBOL)["status"] == "closed")
    filled = tx.fetch_order(buy["id"], SYMBOL)
    assert filled["filled"] == 0.2 and filled["remaining"] == 0 and filled["cost"] == 6000

    # Market orders: a sell by base amount, a buy by quote (ccxt sends quoteOrderQty = amount x price).
    mx.create_order(SYMBOL, "limit", "buy", 0.1, 29990)
    wait_for(lambda: tx.fetch_order_book(SYMBOL)["bids"])
    msell = tx.create_order(SYMBOL, "market", "sell", 0.05)
    wait_for(lambda: tx.fetch_order(msell["id"], SYMBOL)["status"] == "closed")
    assert tx.fetch_order(msell["id"], SYMBOL)["filled"] == 0.05
    mbuy = tx.create_order(SYMBOL, "market", "buy", 0.01, 30000)
    wait_for(lambda: tx.fetch_order(mbuy["id"], SYMBOL)["status"] == "closed")
    assert tx.fetch_order(mbuy["id"], SYMBOL)["filled"] == 0.01

    # A market buy by base amount without a price: ccxt sends `quantity`; the gateway adds a budget
    # (best ask x (1 + cap) x amount) and the engine fills exactly the amount.
    before = tx.fetch_balance()
    qbuy = tx.create_order(SYMBOL, "market", "buy", 0.02)
    wait_for(lambda: tx.fetch_order(qbuy["id"], SYMBOL)["status"] == "closed")
    got = tx.fetch_order(qbuy["id"], SYMBOL)
    assert got["filled"] == 0.02 and got["remaining"] == 0 and got["cost"] == 600  # at the 30000 ask
    after = tx.fetch_balance()
    assert after["USDT"]["free"] == pytest.approx(before["USDT"]["free"] - 600, abs=1e-8)
    assert after["USDT"]["used"] == 0  # the rest of the budget came back
    assert after["BTC"]["free"] == pytest.approx(before["BTC"]["free"] + 0.02 * (1 - 0.002), abs=1e-8)

    # Public data reflects the trades.
    trades = wait_for(lambda: len(tx.fetch_trades(SYMBOL)) >= 3 and tx.fetch_trades(SYMBOL))
    assert {t["price"] for t in trades} >= {30000.0, 29990.0}
    ticker = wait_for(lambda: tx.fetch_ticker(SYMBOL)["last"] and tx.fetch_ticker(SYMBOL))
    assert ticker["symbol"] == SYMBOL and ticker["bid"] == 29990 and ticker["ask"] == 30000
    candles = wait_for(lambda: tx.fetch_ohlcv(SYMBOL, "1m"))
    assert candles[-1][2] == 30000 and candles[-1][3] == 29990  # high, low
    assert sum(c[5] for c in candles) >= 0.26 - 1e-9

    # Open orders, cancel, my trades, balances.
    open_orders = mx.fetch_open_orders(SYMBOL)
    assert {o["id"] for o in open_orders} >= {sell["id"]}
    canceled = mx.cancel_order(sell["id"], SYMBOL)
    assert canceled["status"] == "canceled"
    wait_for(lambda: sell["id"] not in {o["id"] for o in mx.fetch_open_orders(SYMBOL)})
    assert mx.fetch_order(sell["id"], SYMBOL)["status"] == "canceled"
    with pytest.raises(ccxt.OrderNotFound):
        mx.cancel_order("99999999", SYMBOL)

    mine = wait_for(lambda: len(tx.fetch_my_trades(SYMBOL)) >= 4 and tx.fetch_my_trades(SYMBOL))
    assert {t["order"] for t in mine} >= {buy["id"], msell["id"], mbuy["id"], qbuy["id"]}
    balance = tx.fetch_balance()
    assert balance["BTC"]["total"] > 10 - 0.05 and balance["USDT"]["free"] < 100000

    with pytest.raises(ccxt.InsufficientFunds):
        tx.create_order(SYMBOL, "limit", "buy", 100, 30000)

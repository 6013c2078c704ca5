"""REST contract of the gateway against real processes: public market data, signed requests (signature,
timestamp window, replay, permissions, revocation), errors as {code, msg} mapped from reasons, one user
per key, order entry aggregated into SubmitOrders, API keys through the CLI and encrypted at rest."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from exchange.v1 import accounts_service_pb2 as apb
from exchange.v1 import gateway_service_pb2 as gpb

from services.common import enums
from services.gateway.entry import OrderEntry
from services.gateway.market_buy import protected_budget
from testkit.accounts_sim import default_catalog
from tests.gateway.conftest import Env, new_user, wait_for

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


def test_public_endpoints_follow_binance_shapes(env: Env) -> None:
    r = env.rest()
    assert r.get("/api/v3/ping").body == {}
    server = r.get("/api/v3/time").body["serverTime"]
    assert abs(server - time.time() * 1000) < 5000
    info = r.get("/api/v3/exchangeInfo").body
    by = {s["symbol"]: s for s in info["symbols"]}
    assert set(by) == {"BTCUSDT", "ETHUSDT", "ETHBTC", "SOLUSDT", "DOGEUSDT"}
    btc = by["BTCUSDT"]
    assert (btc["baseAsset"], btc["quoteAsset"], btc["market"]) == ("BTC", "USDT", "BTC_USDT")
    filters = {f["filterType"]: f for f in btc["filters"]}
    assert filters["PRICE_FILTER"]["tickSize"] == "0.01"
    assert filters["LOT_SIZE"]["stepSize"] == "0.00001" and filters["LOT_SIZE"]["minQty"] == "0.0001"
    assert filters["NOTIONAL"]["minNotional"] == "5"
    one = r.get("/api/v3/exchangeInfo", symbol="DOGEUSDT").body["symbols"]
    assert [s["symbol"] for s in one] == ["DOGEUSDT"]

    # A market quoted in BTC: prices and amounts as its own tick and lot.
    t = env.trader(new_user(), BTC="5")
    placed = t.signed(
        "POST",
        "/api/v3/order",
        {"symbol": "ETHBTC", "side": "BUY", "type": "LIMIT", "quantity": "1.5", "price": "0.05001"},
    )
    assert placed.status == 200, placed.body
    assert (placed.body["symbol"], placed.body["price"], placed.body["origQty"]) == (
        "ETHBTC",
        "0.05001",
        "1.5",
    )


def test_depth_trades_klines_and_tickers(env: Env) -> None:
    seller, buyer = new_user(), new_user()
    s = env.trader(seller, BTC="5")
    b = env.trader(buyer, USDT="100000")
    before = env.rest().get("/api/v3/depth", symbol="SOLUSDT").body["lastUpdateId"]
    sol = env.trader(new_user(), SOL="100")
    ask = sol.signed(
        "POST",
        "/api/v3/order",
        {
            "symbol": "SOLUSDT",
            "side": "SELL",
            "type": "LIMIT",
            "quantity": "2.5",
            "price": "150.125",
            "timeInForce": "GTC",
        },
    )
    assert ask.status == 200, ask.body
    depth = wait_for(
        lambda: (d := env.rest().get("/api/v3/depth", symbol="SOLUSDT", limit=5).body)["asks"] and d
    )
    assert depth["asks"][0] == ["150.125", "2.5"] and depth["lastUpdateId"] > before
    assert (
        s.signed(
            "POST",
            "/api/v3/order",
            {"symbol": "BTCUSDT", "side": "SELL", "type": "LIMIT", "quantity": "0.3", "price": "31000.5"},
        ).status
        == 200
    )
    assert (
        b.signed(
            "POST",
            "/api/v3/order",
            {
                "symbol": "BTCUSDT",
                "side": "BUY",
                "type": "LIMIT",
                "quantity": "0.1",
                "price": "31000.5",
                "timeInForce": "IOC",
            },
        ).status
        == 200
    )
    trades = wait_for(
        lambda: [
            t for t in env.rest().get("/api/v3/trades", symbol="BTCUSDT").body if t["price"] == "31000.5"
        ]
    )
    assert (
        trades[-1]["qty"] == "0.1"
        and trades[-1]["quoteQty"] == "3100.05"
        and trades[-1]["isBuyerMaker"] is False
    )
    kl = env.rest().get("/api/v3/klines", symbol="BTCUSDT", interval="1m").body
    assert len(kl[-1]) == 12 and isinstance(kl[-1][0], int)
    t24 = env.rest().get("/api/v3/ticker/24hr", symbol="BTCUSDT").body
    assert t24["symbol"] == "BTCUSDT" and t24["lastPrice"] == "31000.5" and t24["askPrice"] == "31000.5"
    assert t24["askQty"] == "0.2"
    prices = {p["symbol"]: p["price"] for p in env.rest().get("/api/v3/ticker/price").body}
    assert prices["BTCUSDT"] == "31000.5" and set(prices) >= {"ETHUSDT", "DOGEUSDT"}
    book = env.rest().get("/api/v3/ticker/bookTicker", symbol="SOLUSDT").body
    assert book == {
        "symbol": "SOLUSDT",
        "bidPrice": "0",
        "bidQty": "0",
        "askPrice": "150.125",
        "askQty": "2.5",
    }


def test_bad_input_gets_precise_codes(env: Env) -> None:
    r = env.rest()
    bad = r.get("/api/v3/depth", symbol="NOPE")
    assert (bad.status, bad.body["code"]) == (400, -1121)
    assert r.get("/api/v3/depth").body["code"] == -1102
    assert r.get("/api/v3/depth", symbol="BTCUSDT", limit="abc").body["code"] == -1130
    assert r.get("/api/v3/depth", symbol="BTCUSDT", limit=99999).body["code"] == -1130
    assert r.get("/api/v3/klines", symbol="BTCUSDT", interval="7m").body["code"] == -1120
    assert r.get("/api/v3/depth", symbol="BTCUSDT", x="y" * 1000).body["code"] == -1100
    t = env.trader(new_user(), USDT="1000")
    cases = [
        (
            {"side": "BUY", "type": "LIMIT", "quantity": "0.1", "price": "30000.001"},
            -1013,
            "PRICE_NOT_ON_TICK",
        ),
        ({"side": "BUY", "type": "LIMIT", "quantity": "0.000001", "price": "30000"}, -1013, None),
        ({"side": "BUY", "type": "LIMIT", "quantity": "1e3", "price": "30000"}, -1111, "INVALID_DECIMAL"),
        ({"side": "BUY", "type": "LIMIT", "quantity": "1", "price": "30000"}, -2010, "INSUFFICIENT_BALANCE"),
        ({"side": "BUY", "type": "MARKET", "quantity": "1", "quoteOrderQty": "10"}, -2010, "INVALID_ORDER"),
        ({"side": "UP", "type": "LIMIT", "quantity": "1", "price": "1"}, -1130, "INVALID_FIELD"),
        ({"side": "BUY", "type": "LIMIT", "quantity": "0.1"}, -1102, "INVALID_FIELD"),
    ]
    for params, code, reason in cases:
        a = t.signed("POST", "/api/v3/order", {"symbol": "BTCUSDT", **params})
        assert a.status == 400 and a.body["code"] == code, (params, a.body)
        if reason:
            assert a.body["reason"] == reason, (params, a.body)
    insufficient = t.signed(
        "POST",
        "/api/v3/order",
        {"symbol": "BTCUSDT", "side": "BUY", "type": "LIMIT", "quantity": "1", "price": "30000"},
    )
    assert insufficient.body["msg"] == "Account has insufficient balance for requested action."
    missing = t.signed("GET", "/api/v3/order", {"symbol": "BTCUSDT", "orderId": 987654321})
    assert (missing.status, missing.body["code"]) == (400, -2013)
    # Nothing changed: the balance is whole.
    usdt = {b["asset"]: b for b in t.signed("GET", "/api/v3/account").body["balances"]}["USDT"]
    assert usdt == {"asset": "USDT", "free": "1000", "locked": "0"}


def test_signatures_timestamps_and_replays(env: Env) -> None:
    t = env.trader(new_user(), USDT="100")
    ok = t.signed("GET", "/api/v3/account")
    assert ok.status == 200 and ok.body["canWithdraw"] is False
    assert t.signed("GET", "/api/v3/account", in_body=False).status == 200
    body_signed = t.signed(
        "POST",
        "/api/v3/order",
        {"symbol": "BTCUSDT", "side": "BUY", "type": "LIMIT", "quantity": "0.001", "price": "10000"},
        in_body=True,
    )
    assert body_signed.status == 200, body_signed.body

    wrong = t.signed("GET", "/api/v3/account", secret="0" * 64)
    assert (wrong.status, wrong.body["code"], wrong.body["reason"]) == (400, -1022, "INVALID_SIGNATURE")
    old = t.signed("GET", "/api/v3/account", timestamp=int(time.time() * 1000) - 10_000)
    assert (old.status, old.body["code"], old.body["reason"]) == (400, -1021, "TIMESTAMP_OUTSIDE_RECV_WINDOW")
    future = t.signed("GET", "/api/v3/account", timestamp=int(time.time() * 1000) + 5_000)
    assert future.body["code"] == -1021
    wide = t.signed(
        "GET", "/api/v3/account", {"recvWindow": 20_000}, timestamp=int(time.time() * 1000) - 10_000
    )
    assert wide.status == 200
    assert t.signed("GET", "/api/v3/account", {"recvWindow": 600_000}).body["code"] == -1131

    # The same signed request twice: the second is refused.
    stamp = int(time.time() * 1000)
    first = t.signed("GET", "/api/v3/openOrders", {"symbol": "BTCUSDT"}, timestamp=stamp)
    again = t.signed("GET", "/api/v3/openOrders", {"symbol": "BTCUSDT"}, timestamp=stamp)
    assert first.status == 200 and (again.status, again.body["code"]) == (400, -1022)
    # The signature covers only the parameters: the same parameters at the same millisecond on another
    # endpoint are another request, not a replay (a page refreshing its account and its strategies).
    stamp = int(time.time() * 1000)
    assert t.signed("GET", "/api/v3/account", timestamp=stamp).status == 200
    assert t.signed("GET", "/api/v3/openOrders", timestamp=stamp).status == 200
    assert t.signed("GET", "/api/v3/account", timestamp=stamp).body["code"] == -1022

    nokey = env.rest().call("GET", "/api/v3/account", {"timestamp": stamp, "signature": "0" * 64})
    assert (nokey.status, nokey.body["code"]) == (401, -2014)
    forged = env.rest("f" * 64, t.secret).signed("GET", "/api/v3/account")
    assert (forged.status, forged.body["code"], forged.body["reason"]) == (401, -2015, "API_KEY_NOT_FOUND")
    unsigned = env.rest().call(
        "GET", "/api/v3/account", {"timestamp": stamp}, headers={"X-MBX-APIKEY": t.key}
    )
    assert unsigned.body["code"] == -1102


def test_a_key_acts_for_its_user_only_and_within_its_permissions(env: Env) -> None:
    alice, bob = new_user(), new_user()
    a = env.trader(alice, USDT="10000")
    b = env.trader(bob, USDT="10000")
    placed = a.signed(
        "POST",
        "/api/v3/order",
        {
            "symbol": "BTCUSDT",
            "side": "BUY",
            "type": "LIMIT",
            "quantity": "0.01",
            "price": "20000",
            "newClientOrderId": "mine-1",
            "userId": str(bob),
        },
    )
    assert placed.status == 200 and placed.body["clientOrderId"] == "mine-1"
    order_id = placed.body["orderId"]
    # Bob sees nothing of it and cannot cancel it, by id or client id.
    assert b.signed("GET", "/api/v3/order", {"symbol": "BTCUSDT", "orderId": order_id}).body["code"] == -2013
    assert (
        b.signed("DELETE", "/api/v3/order", {"symbol": "BTCUSDT", "orderId": order_id}).body["code"] == -2013
    )
    assert b.signed("GET", "/api/v3/openOrders").body == []
    bob_usdt = {x["asset"]: x for x in b.signed("GET", "/api/v3/account").body["balances"]}["USDT"]
    assert bob_usdt["locked"] == "0"
    # Alice's key placed it as Alice.
    got = a.signed("GET", "/api/v3/order", {"symbol": "BTCUSDT", "origClientOrderId": "mine-1"}).body
    assert got["orderId"] == order_id and got["status"] == "NEW" and got["price"] == "20000"

    reader = env.rest(*env.key(alice, gpb.API_KEY_PERMISSION_READ))
    assert reader.signed("GET", "/api/v3/openOrders", {"symbol": "BTCUSDT"}).status == 200
    refused = reader.signed("DELETE", "/api/v3/order", {"symbol": "BTCUSDT", "orderId": order_id})
    assert (refused.status, refused.body["code"], refused.body["reason"]) == (
        401,
        -2015,
        "KEY_PERMISSION_DENIED",
    )

    canceled = a.signed("DELETE", "/api/v3/openOrders", {"symbol": "BTCUSDT"})
    assert canceled.status == 200 and [o["orderId"] for o in canceled.body] == [order_id]
    wait_for(lambda: a.signed("GET", "/api/v3/openOrders", {"symbol": "BTCUSDT"}).body == [])
    done = wait_for(
        lambda: [
            o
            for o in a.signed("GET", "/api/v3/allOrders", {"symbol": "BTCUSDT"}).body
            if o["orderId"] == order_id and o["status"] == "CANCELED"
        ]
    )
    assert done[0]["clientOrderId"] == "mine-1"


def test_extras_amend_expiry_and_self_trade_prevention(env: Env) -> None:
    user = new_user()
    t = env.trader(user, USDT="100000", BTC="1")
    rest = t.signed(
        "POST",
        "/api/v3/order",
        {"symbol": "BTCUSDT", "side": "BUY", "type": "LIMIT", "quantity": "0.5", "price": "25000"},
    ).body
    amended = t.signed(
        "PUT",
        "/api/v3/order/amend/keepPriority",
        {"symbol": "BTCUSDT", "orderId": rest["orderId"], "newQty": "0.2"},
    )
    assert amended.status == 200 and amended.body["amendedOrder"]["orderId"] == rest["orderId"]
    assert amended.body["amendedOrder"]["origQty"] == "0.2"
    wait_for(
        lambda: (
            t.signed("GET", "/api/v3/order", {"symbol": "BTCUSDT", "orderId": rest["orderId"]}).body[
                "origQty"
            ]
            == "0.2"
        )
    )
    until = int(time.time() * 1000) + 1500
    gtd = t.signed(
        "POST",
        "/api/v3/order",
        {
            "symbol": "BTCUSDT",
            "side": "BUY",
            "type": "LIMIT",
            "quantity": "0.01",
            "price": "24000",
            "goodTillDate": until,
        },
    ).body
    assert gtd["timeInForce"] == "GTD" and gtd["expireTime"] == until
    wait_for(
        lambda: (
            t.signed("GET", "/api/v3/order", {"symbol": "BTCUSDT", "orderId": gtd["orderId"]}).body["status"]
            == "EXPIRED"
        ),
        timeout=15,
    )
    # Self-trade prevention: EXPIRE_TAKER keeps the resting buy, expires the incoming sell.
    sell = t.signed(
        "POST",
        "/api/v3/order",
        {
            "symbol": "BTCUSDT",
            "side": "SELL",
            "type": "LIMIT",
            "quantity": "0.1",
            "price": "25000",
            "selfTradePreventionMode": "EXPIRE_TAKER",
        },
    ).body
    assert sell["selfTradePreventionMode"] == "EXPIRE_TAKER"
    final = wait_for(
        lambda: (
            (o := t.signed("GET", "/api/v3/order", {"symbol": "BTCUSDT", "orderId": sell["orderId"]}).body)[
                "status"
            ]
            != "NEW"
            and o
        )
    )
    assert final["status"] == "EXPIRED_IN_MATCH" and final["executedQty"] == "0"
    maker = t.signed(
        "POST",
        "/api/v3/order",
        {"symbol": "BTCUSDT", "side": "SELL", "type": "LIMIT_MAKER", "quantity": "0.1", "price": "25000"},
    ).body
    assert maker["type"] == "LIMIT_MAKER"  # it would take: refused by the engine (post-only)
    wait_for(
        lambda: (
            t.signed("GET", "/api/v3/order", {"symbol": "BTCUSDT", "orderId": maker["orderId"]}).body[
                "status"
            ]
            == "REJECTED"
        )
    )


def test_orders_of_many_clients_share_the_batched_stream(env: Env) -> None:
    users = [new_user() for _ in range(8)]
    env.users.extend(users)
    for u in users:
        env.cluster.accounts.Deposit(
            apb.DepositRequest(
                user_id=u, asset="USDT", amount="100000", business="test", business_id=f"batch-{u}"
            )
        )

    async def run() -> tuple[int, int, list[int]]:
        async with env.cluster.client("accounts-0", principal="gateway") as accounts:
            entry = OrderEntry(accounts, max_batch=100)
            entry.start()
            try:
                commands = [
                    apb.OrderCommand(
                        place_order=apb.PlaceOrderRequest(
                            user_id=users[i % len(users)],
                            market="BTC_USDT",
                            side=enums.BUY,  # type: ignore[arg-type]
                            type=enums.LIMIT,  # type: ignore[arg-type]
                            price=str(10000 + i),
                            amount="0.001",
                        )
                    )
                    for i in range(400)
                ]
                results = await asyncio.gather(*(entry.submit(c) for c in commands))
                return entry.batches, entry.commands, [r.code for r in results]
            finally:
                await entry.close()

    batches, commands, codes = asyncio.run(run())
    assert codes == [0] * 400 and commands == 400
    assert batches < 100, f"{batches} batches for 400 concurrent orders: not aggregated"


def test_api_keys_by_cli_listed_revoked_and_encrypted_at_rest(env: Env) -> None:
    cfg = str(env.cluster.config_path)

    def cli(*args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "services.cli", "--config", cfg, "apikey", *args],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            env=dict(os.environ),
        )
        assert done.returncode == 0, (args, done.stdout, done.stderr)
        return done.stdout

    user = new_user()
    created = cli("create", str(user), "--permissions", "read", "--label", "bot 1").splitlines()
    api_key = created[0].split()[0]
    secret = created[1].split()[1]
    assert created[0].endswith("read  bot 1") and len(secret) == 64
    listed = cli("list", str(user))
    assert api_key in listed and secret not in listed
    r = env.rest(api_key, secret)
    assert r.signed("GET", "/api/v3/account").status == 200

    # The database holds the key id but not the secret (encrypted with the key file's key).
    db = (env.cluster.dir / "data" / "gateway.sqlite").read_bytes()
    assert api_key.encode() in db and secret.encode() not in db
    key_file = env.cluster.dir / "data" / "secrets" / "gateway-keys.key"
    assert oct(key_file.stat().st_mode & 0o777) == "0o600"

    assert "revoked" in cli("revoke", api_key)
    gone = r.signed("GET", "/api/v3/account")
    assert (gone.status, gone.body["code"]) == (401, -2015)
    assert api_key not in cli("list", str(user)) and "REVOKED" in cli("list", str(user), "--all")
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "services.cli",
            "--config",
            cfg,
            "apikey",
            "create",
            str(user),
            "--permissions",
            "withdraw",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2 and "withdraw" in bad.stderr


def test_openapi_document_is_served(env: Env) -> None:
    doc = env.rest().get("/openapi.json").body
    assert doc["openapi"].startswith("3.")
    from services.gateway import openapi

    assert doc == openapi.document()  # which lists every route: tests/gateway/test_openapi.py
    order = doc["paths"]["/api/v3/order"]["post"]
    assert order["security"] == [{"ApiKey": []}]
    assert {p["name"] for p in order["parameters"]} >= {"symbol", "side", "type", "timestamp", "signature"}


def test_protected_budget_is_integer_and_capped() -> None:
    spec = default_catalog().markets["BTC_USDT"]  # 0.01 USDT x 0.00001 BTC = 10 units a tick-lot
    assert spec.quote_units_per_tick_lot == 10
    # ceil(3000001 x 1.05) = ceil(3150001.05) = 3150002 ticks, x 2000 lots x 10 units
    assert protected_budget(spec, 3_000_001, 2000, 500, 10**15) == 3_150_002 * 2000 * 10
    assert protected_budget(spec, 3_000_001, 2000, 500, 12345) == 12345  # what is available
    assert protected_budget(spec, 3_000_000, 2000, 0, 10**15) == 3_000_000 * 2000 * 10


def test_market_buy_by_quantity_gets_a_protected_budget(env: Env) -> None:
    """MARKET BUY with `quantity`: amount + a budget of best ask x (1 + 5 %) x quantity, at most the
    user's available quote; whichever limit comes first ends it, the rest expires, nothing stays
    locked."""
    seller, buyer, poor = new_user(), new_user(), new_user()
    s = env.trader(seller, ETH="10")
    b = env.trader(buyer, BTC="1")
    p = env.trader(poor, BTC="0.003")
    order = {"symbol": "ETHBTC", "side": "BUY", "type": "MARKET", "quantity": "2"}
    wait_for(lambda: not env.rest().get("/api/v3/depth", symbol="ETHBTC").body["asks"])
    empty = b.signed("POST", "/api/v3/order", order)
    assert (empty.status, empty.body["code"], empty.body["reason"]) == (400, -2010, "NO_MARKET_PRICE")
    for qty, price in (("1", "0.05"), ("2", "0.06")):
        sell = {"symbol": "ETHBTC", "side": "SELL", "type": "LIMIT", "quantity": qty, "price": price}
        assert s.signed("POST", "/api/v3/order", sell).status == 200
    wait_for(lambda: len(env.rest().get("/api/v3/depth", symbol="ETHBTC").body["asks"]) == 2)

    # Budget 0.0525 x 2 = 0.105 BTC: 1 ETH at 0.05 (0.05), then 0.055 buys 0.916 ETH at 0.06 (0.05496):
    # 2 ETH would cost 0.11, more than the cap allows, so 1.916 fill and the rest expires.
    placed = b.signed("POST", "/api/v3/order", order)
    assert placed.status == 200, placed.body
    oid = placed.body["orderId"]
    done = wait_for(
        lambda: (
            (o := b.signed("GET", "/api/v3/order", {"symbol": "ETHBTC", "orderId": oid}).body)["status"]
            not in ("NEW", "PARTIALLY_FILLED")
            and o
        )
    )
    assert (done["status"], done["executedQty"], done["cummulativeQuoteQty"]) == (
        "EXPIRED",
        "1.916",
        "0.10496",
    )
    balances = {x["asset"]: x for x in b.signed("GET", "/api/v3/account").body["balances"]}
    assert balances["BTC"] == {"asset": "BTC", "free": "0.89504", "locked": "0"}  # 0.00004 came back
    assert balances["ETH"]["free"] == "1.912168"  # less the 0.2 % taker fee (0.002 + 0.001832)

    # Within the cap, exactly the quantity: 0.05 ETH at 0.06 (budget 0.063 x 0.05), FILLED.
    placed = b.signed("POST", "/api/v3/order", {**order, "quantity": "0.05"})
    assert placed.status == 200, placed.body
    oid = placed.body["orderId"]
    done = wait_for(
        lambda: (
            (o := b.signed("GET", "/api/v3/order", {"symbol": "ETHBTC", "orderId": oid}).body)["status"]
            not in ("NEW", "PARTIALLY_FILLED")
            and o
        )
    )
    assert (done["status"], done["executedQty"], done["cummulativeQuoteQty"]) == ("FILLED", "0.05", "0.003")
    balances = {x["asset"]: x for x in b.signed("GET", "/api/v3/account").body["balances"]}
    assert balances["BTC"] == {"asset": "BTC", "free": "0.89204", "locked": "0"}

    # The user's available quote caps the budget: 0.003 BTC buys 0.05 of 1 ETH at 0.06.
    placed = p.signed("POST", "/api/v3/order", {**order, "quantity": "1"})
    assert placed.status == 200, placed.body
    oid = placed.body["orderId"]
    done = wait_for(
        lambda: (
            (o := p.signed("GET", "/api/v3/order", {"symbol": "ETHBTC", "orderId": oid}).body)["status"]
            not in ("NEW", "PARTIALLY_FILLED")
            and o
        )
    )
    assert (done["status"], done["executedQty"], done["cummulativeQuoteQty"]) == ("EXPIRED", "0.05", "0.003")
    balances = {x["asset"]: x for x in p.signed("GET", "/api/v3/account").body["balances"]}
    assert balances["BTC"] == {"asset": "BTC", "free": "0", "locked": "0"}

"""Hosted strategies through the gateway: a grid previewed, created, listed with its report and
stopped with a key's `strategies` permission, invisible to other users' keys (real processes, with the
quantizer service)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from exchange.v1 import gateway_service_pb2 as gpb

from testkit.cluster import Cluster
from tests.gateway.conftest import Env, new_user, wait_for

pytestmark = pytest.mark.slow

GRID = {"lowerPrice": "29000", "upperPrice": "31000", "intervals": 4, "investment": "1000"}


@pytest.fixture(scope="module")
def qenv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    c = Cluster(
        Path(tmp_path_factory.mktemp("strategies")),
        with_history=True,
        with_market=True,
        with_quantizer=True,
        with_gateway=True,
    )
    c.start()
    try:
        yield Env(c)
    finally:
        c.stop()


def trade_at_30000(qenv: Env) -> None:
    """One trade at 30000, so the market has a last price (each test makes its own)."""
    seller, buyer = qenv.trader(new_user(), BTC="1"), qenv.trader(new_user(), USDT="100000")
    assert (
        seller.signed(
            "POST",
            "/api/v3/order",
            {"symbol": "BTCUSDT", "side": "SELL", "type": "LIMIT", "quantity": "0.01", "price": "30000"},
        ).status
        == 200
    )
    assert (
        buyer.signed(
            "POST",
            "/api/v3/order",
            {"symbol": "BTCUSDT", "side": "BUY", "type": "LIMIT", "quantity": "0.01", "price": "30000"},
        ).status
        == 200
    )
    wait_for(lambda: qenv.rest().get("/api/v3/ticker/price", symbol="BTCUSDT").body["price"] == "30000")


def test_grid_through_the_gateway(qenv: Env) -> None:
    trade_at_30000(qenv)

    owner = new_user()
    qenv.trader(owner, USDT="5000")
    key, secret = qenv.key(owner, gpb.API_KEY_PERMISSION_READ, gpb.API_KEY_PERMISSION_STRATEGIES)
    bot = qenv.rest(key, secret)
    plan = bot.signed(
        "POST", "/api/v3/strategy/preview", {"symbol": "BTCUSDT", "type": "GRID", "config": json.dumps(GRID)}
    )
    assert plan.status == 200, plan.body
    assert plan.body["levels"] == ["29000", "29500", "30000", "30500", "31000"]

    made = bot.signed(
        "POST",
        "/api/v3/strategy",
        {"symbol": "BTCUSDT", "type": "GRID", "config": json.dumps(GRID), "clientStrategyId": "grid-1"},
    )
    assert made.status == 200, made.body
    sid = made.body["strategy"]["strategyId"]
    listed = wait_for(lambda: bot.signed("GET", "/api/v3/strategies").body.get("strategies"))
    assert [s["strategyId"] for s in listed] == [sid] and "report" in listed[0]

    # Another user's key sees nothing of it; a key without the permission cannot create one.
    stranger = qenv.trader(new_user(), USDT="10")
    assert stranger.signed("GET", "/api/v3/strategy", {"strategyId": sid}).body["code"] == -2013
    assert (
        stranger.signed("DELETE", "/api/v3/strategy", {"strategyId": sid}).body["code"] == -2015
    )  # no permission
    trader_only = qenv.rest(*qenv.key(owner, gpb.API_KEY_PERMISSION_TRADE))
    refused = trader_only.signed(
        "POST", "/api/v3/strategy", {"symbol": "BTCUSDT", "type": "GRID", "config": json.dumps(GRID)}
    )
    assert (refused.status, refused.body["reason"]) == (401, "KEY_PERMISSION_DENIED")
    bad = bot.signed(
        "POST", "/api/v3/strategy", {"symbol": "BTCUSDT", "type": "GRID", "config": '{"nope": 1}'}
    )
    assert bad.status == 400 and bad.body["code"] == -1130

    stopped = bot.signed("DELETE", "/api/v3/strategy", {"strategyId": sid, "mode": "CANCEL_ORDERS"})
    assert stopped.status == 200, stopped.body
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        state = bot.signed("GET", "/api/v3/strategy", {"strategyId": sid}).body["state"]
        if state.endswith("STOPPED"):
            break
        time.sleep(0.2)
    assert state.endswith("STOPPED")


def test_the_page_creates_a_grid_from_its_preview(qenv: Env, browser: object) -> None:
    owner = new_user()
    qenv.trader(owner, USDT="5000")
    trade_at_30000(qenv)
    key, secret = qenv.key(owner, gpb.API_KEY_PERMISSION_READ, gpb.API_KEY_PERMISSION_STRATEGIES)
    page = browser.new_page()  # type: ignore[attr-defined]
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(qenv.base + "/")
    page.wait_for_selector("#market option[value=BTCUSDT]", state="attached")
    page.select_option("#market", "BTCUSDT")
    page.fill("#apiKey", key)
    page.fill("#apiSecret", secret)
    page.click("#login")
    page.wait_for_selector(f"#status:has-text('user {owner}')")
    page.fill("#gridLower", "29000")
    page.fill("#gridUpper", "31000")
    page.fill("#gridIntervals", "4")
    page.fill("#gridInvestment", "1000")
    page.click("#gridPreview")
    page.wait_for_selector("#gridPlan:has-text('levels 29000 29500 30000 30500 31000')")
    page.click("#gridCreate")
    page.wait_for_selector("#gridPlan:has-text('created')")
    try:
        page.wait_for_selector("#strategies tbody tr[data-strategy-id]", timeout=20_000)
    except Exception as exc:
        listed = qenv.rest(key, secret).signed("GET", "/api/v3/strategies")
        raise AssertionError(
            f"no strategy listed; page status: {page.inner_text('#status')!r}; page errors: {errors}; "
            f"GET /api/v3/strategies: {listed.status} {listed.body}"
        ) from exc
    assert "BTC_USDT" in page.inner_text("#strategies tbody")
    assert not errors, errors
    page.close()

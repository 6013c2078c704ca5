"""The gateway's web page in headless Chromium (Playwright): it lists the markets, logs in by API key,
places an order that fills against a resting one and sees the fill in its balances, trades and book.

Chromium comes from Debian (`apt-get install -y chromium`, done here when missing, as root); Playwright
drives it with executable_path=/usr/bin/chromium (`playwright install` cannot download browsers here).
The page's script must be built (./scripts/setup runs `npm run build` in services/gateway/web)."""

from __future__ import annotations

import pytest

from tests.gateway.conftest import Env, new_user

pytestmark = pytest.mark.slow


def test_the_page_places_an_order_and_sees_it_fill(env: Env, browser: object) -> None:
    seller_user, buyer_user = new_user(), new_user()
    seller = env.trader(seller_user, DOGE="10000")
    env.trader(buyer_user, USDT="1000")
    key, secret = env.key(buyer_user)
    placed = seller.signed(
        "POST",
        "/api/v3/order",
        {"symbol": "DOGEUSDT", "side": "SELL", "type": "LIMIT", "quantity": "500", "price": "0.12"},
    )
    assert placed.status == 200, placed.body

    page = browser.new_page()  # type: ignore[attr-defined]
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(env.base + "/")
    page.wait_for_selector("#market option[value=DOGEUSDT]", state="attached")
    page.select_option("#market", "DOGEUSDT")
    page.wait_for_selector("#asks tr:has-text('0.12')")  # the resting sell, live in the book
    assert page.locator("#chart canvas").count() > 0  # the candlestick chart is drawn

    page.fill("#apiKey", key)
    page.fill("#apiSecret", secret)
    page.click("#login")
    page.wait_for_selector(f"#status:has-text('user {buyer_user}')")
    page.wait_for_selector("#balances tr[data-asset=USDT] .free:has-text('1000')")

    # A limit buy below the ask rests: it shows in open orders, and the page cancels it.
    page.select_option("#side", "BUY")
    page.fill("#price", "0.1")
    page.fill("#qty", "100")
    page.click("#place")
    page.wait_for_selector("#openOrders tbody tr")
    page.click("#openOrders button.cancel")
    page.wait_for_selector("#openOrders tbody tr", state="detached")

    # A limit buy at the ask fills: the trade appears and the balances change.
    page.fill("#price", "0.12")
    page.fill("#qty", "200")
    page.click("#place")
    page.wait_for_selector("#orderResult:has-text('order')")
    page.wait_for_selector("#trades tbody tr:has-text('0.12')")
    page.wait_for_selector(
        "#balances tr[data-asset=DOGE] .free:has-text('199.')", timeout=15_000
    )  # 200 less the fee
    page.wait_for_selector("#asks tr:has-text('300')")  # what is left of the sell
    assert not errors, errors
    page.close()

"""A client_order_id names one order of its user: an identical repeat returns it (duplicate=true), the
same id with other parameters is refused (ALREADY_EXISTS, naming the original)."""

from __future__ import annotations

from typing import Any

import pytest

from services.accounts.machine import AccountsMachine
from services.common.errors import AlreadyExists, Reason
from testkit.accounts_sim import MiniExchange

BUY, SELL = 1, 2
LIMIT, MARKET = 1, 2
GTC, IOC, GTD = 1, 2, 4

ORIGINAL: dict[str, Any] = {"price": "30000", "amount": "0.1", "client_order_id": "abc-1"}


def funded() -> MiniExchange:
    x = MiniExchange()
    x.deposit(1, "USDT", "100000")
    x.deposit(1, "BTC", "1")
    return x


@pytest.mark.parametrize(
    "changed",
    [
        {"price": "31000"},
        {"amount": "0.2"},
        {"side": SELL},
        {"market": "ETH_USDT", "price": "2000"},
        {"time_in_force": IOC},
        {"post_only": True},
        {"self_trade_prevention": 1},
    ],
)
def test_same_client_order_id_with_other_parameters_is_refused(changed: dict[str, Any]) -> None:
    x = funded()
    first = x.place(1, "BTC_USDT", BUY, **ORIGINAL).order
    before = x.accounts.state_hash()
    kw = {**ORIGINAL, **changed}
    market = kw.pop("market", "BTC_USDT")
    side = kw.pop("side", BUY)
    with pytest.raises(AlreadyExists) as info:
        x.place(1, market, side, **kw)
    assert info.value.reason == Reason.DUPLICATE_CLIENT_ORDER_ID
    assert info.value.metadata == {"order_id": str(first.order_id)}
    assert f"order {first.order_id}" in info.value.message
    assert x.accounts.state_hash() == before
    assert x.balance(1, "USDT")[1] == 3000 * 10**8


def test_identical_repeat_returns_the_original_also_after_amends() -> None:
    x = funded()
    first = x.place(1, "BTC_USDT", BUY, time_in_force=GTC, **ORIGINAL).order
    again = x.place(1, "BTC_USDT", BUY, **ORIGINAL)  # unspecified time in force is GTC
    assert again.duplicate and again.order.order_id == first.order_id
    x.amend(1, first.order_id, new_price="29000", new_amount="0.05")
    order = x.accounts.ledger.lookup(1, first.order_id)
    assert (order.price, order.amount) == (2_900_000, 5_000)
    # Compared as placed: the original parameters are still a repeat, the amended ones are not.
    again = x.place(1, "BTC_USDT", BUY, **ORIGINAL)
    assert again.duplicate and again.order.order_id == first.order_id
    with pytest.raises(AlreadyExists):
        x.place(1, "BTC_USDT", BUY, price="29000", amount="0.05", client_order_id="abc-1")
    # ... also after a snapshot round trip, and after the order is done.
    restored = AccountsMachine.restore(x.catalog, x.source, x.accounts.snapshot())
    assert restored.ledger.lookup(1, first.order_id).placed() == order.placed()
    x.cancel(1, first.order_id)
    assert x.place(1, "BTC_USDT", BUY, **ORIGINAL).duplicate


def test_repeat_of_a_gtd_order_after_its_expire_time_is_still_a_repeat() -> None:
    x = funded()
    kw: dict[str, Any] = {**ORIGINAL, "time_in_force": GTD, "expire_time_us": x.time_us + 1_000_000}
    first = x.place(1, "BTC_USDT", BUY, **kw).order
    x.tick(2_000_000)
    again = x.place(1, "BTC_USDT", BUY, **kw)
    assert again.duplicate and again.order.order_id == first.order_id


def test_market_orders_compare_their_budget() -> None:
    x = funded()
    x.deposit(2, "BTC", "1")
    x.place(2, "BTC_USDT", SELL, price="30000", amount="0.5")
    first = x.place(1, "BTC_USDT", BUY, type=MARKET, quote_amount="100", client_order_id="m-1").order
    assert x.place(1, "BTC_USDT", BUY, type=MARKET, quote_amount="100", client_order_id="m-1").duplicate
    with pytest.raises(AlreadyExists) as info:
        x.place(1, "BTC_USDT", BUY, type=MARKET, quote_amount="200", client_order_id="m-1")
    assert info.value.metadata["order_id"] == str(first.order_id)

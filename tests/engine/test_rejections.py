"""Invalid PlaceOrder shapes: OrderAccepted, then OrderDone REJECTED / DETAIL_INVALID (or EXPIRED for a GTD
already due), never a trade, and the book exactly as before — even when a crossing order is resting."""

from __future__ import annotations

from typing import Any

import pytest

from services.matching.engine import MatchingEngine
from services.matching.model import (
    BUY,
    DETAIL_EXPIRE_TIME,
    DETAIL_INVALID,
    DONE_EXPIRED,
    DONE_REJECTED,
    FOK,
    GTC,
    GTD,
    IOC,
    LIMIT,
    MARKET,
    REJECT_INVALID,
    SELL,
    OrderAccepted,
    PlaceOrder,
)
from tests.engine.conftest import BTC, BTC_USDT, T0, BookDriver, applied_tuples, done, ev, evs, lim, rejected


def _book() -> BookDriver:
    """Liquidity on both sides that any valid order of the cases below would trade with."""
    d = BookDriver()
    d.placed(lim(1, 1, BUY, 100, 5), lim(2, 1, SELL, 101, 5), lim(3, 1, BUY, 99, 5), lim(4, 1, SELL, 102, 5))
    return d


def P(**kw: Any) -> PlaceOrder:
    base: dict[str, Any] = {
        "order_id": 50,
        "user_id": 2,
        "market": BTC,
        "side": BUY,
        "type": LIMIT,
        "tif": GTC,
        "price": 101,
        "amount": 3,
    }
    base.update(kw)
    return PlaceOrder(**base)


INVALID = {
    "limit zero price": P(price=0),
    "limit negative price": P(price=-101),
    "limit zero amount": P(amount=0),
    "limit negative amount": P(amount=-3),
    "sell negative amount": P(side=SELL, price=100, amount=-1),
    "side unspecified": P(side=0),
    "side unknown": P(side=3),
    "side unknown sell-like price": P(side=7, price=100),
    "side unknown ioc": P(side=3, tif=IOC),
    "type unspecified": P(type=0),
    "type unknown": P(type=3),
    "tif unspecified": P(tif=0),
    "tif unknown": P(tif=5),
    "gtc with an expire time": P(expire_at=T0 + 1000),
    "ioc with an expire time": P(tif=IOC, expire_at=T0 + 1000),
    "fok with an expire time": P(tif=FOK, expire_at=T0 + 1000),
    "gtd without an expire time": P(tif=GTD, expire_at=0),
    "gtd zero price": P(tif=GTD, price=0, expire_at=T0 + 1000),
    "post-only market buy": P(type=MARKET, tif=IOC, price=0, amount=0, quote_budget=5000, post_only=True),
    "post-only market sell": P(type=MARKET, tif=IOC, side=SELL, price=0, amount=2, post_only=True),
    "market buy without budget": P(type=MARKET, tif=IOC, price=0, amount=0),
    "market buy with negative budget": P(type=MARKET, tif=IOC, price=0, amount=0, quote_budget=-1),
    "market buy with amount but no budget": P(type=MARKET, tif=IOC, price=0, amount=2),
    "market buy with amount and negative budget": P(type=MARKET, tif=IOC, price=0, amount=2, quote_budget=-1),
    "market buy with negative amount": P(type=MARKET, tif=IOC, price=0, amount=-2, quote_budget=5000),
    "market sell without amount": P(type=MARKET, tif=IOC, side=SELL, price=0, amount=0),
    "market sell with negative amount": P(type=MARKET, tif=IOC, side=SELL, price=0, amount=-2),
    "market with an expire time": P(type=MARKET, tif=IOC, side=SELL, price=0, amount=2, expire_at=T0 + 9),
    "market fok": P(type=MARKET, tif=FOK, side=SELL, price=0, amount=20),
    "market gtd": P(type=MARKET, tif=GTD, side=SELL, price=0, amount=2),
    "market unknown tif": P(type=MARKET, tif=9, price=0, amount=0, quote_budget=5000),
    "market unknown side": P(type=MARKET, tif=IOC, side=0, price=0, amount=2),
}


@pytest.mark.parametrize("cmd", list(INVALID.values()), ids=list(INVALID))
def test_invalid_place_is_rejected_and_changes_nothing(cmd: PlaceOrder) -> None:
    d = _book()
    before = d.view()
    assert evs(d.place(cmd)) == evs([OrderAccepted(cmd), done(cmd, DONE_REJECTED, DETAIL_INVALID)])
    assert d.view() == before
    assert cmd.order_id not in d.book.orders


@pytest.mark.parametrize("cmd", list(INVALID.values()), ids=list(INVALID))
def test_invalid_place_through_the_engine(cmd: PlaceOrder) -> None:
    eng = MatchingEngine("matching-0", [BTC_USDT])
    eng.apply("s", 1, T0, lim(1, 1, SELL, 101, 5))
    hash_before = eng.books[BTC].state_hash()
    out = eng.apply("s", 2, T0, cmd)
    assert applied_tuples(out) == [
        (BTC, ev(OrderAccepted(cmd))),
        (BTC, ev(done(cmd, DONE_REJECTED, DETAIL_INVALID))),
    ]
    assert eng.books[BTC].state_hash() == hash_before
    assert eng.event_seq == 3


@pytest.mark.parametrize("delta", [0, -1])
def test_gtd_already_due_is_expired_not_rejected(delta: int) -> None:
    d = _book()
    before = d.view()
    cmd = P(tif=GTD, expire_at=T0 + delta)
    assert evs(d.place(cmd)) == evs([OrderAccepted(cmd), done(cmd, DONE_EXPIRED, DETAIL_EXPIRE_TIME)])
    assert d.view() == before


@pytest.mark.parametrize(
    "cmd",
    [
        P(order_id=2, user_id=1, side=SELL, price=101, amount=5),  # identical to the resting order
        P(order_id=2, user_id=2, side=BUY, price=105, amount=1),  # would cross: must not trade
        P(order_id=1, user_id=9, type=MARKET, tif=IOC, side=SELL, price=0, amount=1),
    ],
    ids=["same", "crossing", "market"],
)
def test_duplicate_order_id_in_the_book_is_rejected(cmd: PlaceOrder) -> None:
    d = _book()
    before = d.view()
    assert evs(d.place(cmd)) == evs([OrderAccepted(cmd), rejected(cmd.order_id, cmd.user_id, REJECT_INVALID)])
    assert d.view() == before


def test_an_order_id_may_be_reused_once_the_order_is_done() -> None:
    d = _book()
    d.cancel(2, 1)
    cmd = P(order_id=2, user_id=2, side=SELL, price=103, amount=1)
    d.placed(cmd)
    assert d.l3(SELL) == [(4, 102, 5), (2, 103, 1)]


def test_valid_shapes_next_to_the_invalid_ones_do_trade() -> None:
    """The cases above are rejected for the reason named, not because the book cannot trade."""
    for cmd in (
        P(),
        P(tif=IOC),
        P(tif=FOK),
        P(tif=GTD, expire_at=T0 + 1000),
        P(type=MARKET, tif=IOC, price=0, amount=0, quote_budget=5000),
        P(type=MARKET, tif=IOC, price=0, amount=2, quote_budget=5000),
        P(type=MARKET, tif=GTC, price=0, amount=2, quote_budget=5000),
        P(type=MARKET, tif=IOC, side=SELL, price=0, amount=2),
        P(type=MARKET, tif=GTC, side=SELL, price=0, amount=2),
    ):
        d = _book()
        out = evs(d.place(cmd))
        assert out[0] == ev(OrderAccepted(cmd)) and out[1][0] == "trade", cmd

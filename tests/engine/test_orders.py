"""Order types and commands of one book, event by event (BTC_USDT scales: 10 quote units per tick x lot,
1000 base units per lot)."""

from __future__ import annotations

import pytest

from services.matching.book import OrderBook
from services.matching.engine import Applied, MatchingEngine
from services.matching.model import (
    BUY,
    DETAIL_CANCEL_ALL,
    DETAIL_EXPIRE_TIME,
    DETAIL_FOK_NOT_FILLABLE,
    DETAIL_INVALID,
    DETAIL_IOC_REMAINDER,
    DETAIL_NO_LIQUIDITY,
    DETAIL_NONE,
    DETAIL_POST_ONLY_WOULD_TAKE,
    DETAIL_REDUCED_TO_ZERO,
    DETAIL_SELF_TRADE,
    DETAIL_USER_CANCEL,
    DONE_CANCELED,
    DONE_EXPIRED,
    DONE_FILLED,
    DONE_REJECTED,
    FOK,
    GTD,
    IOC,
    MARKET,
    REJECT_INVALID,
    REJECT_NOT_OWNER,
    REJECT_ORDER_NOT_FOUND,
    REJECT_POST_ONLY_WOULD_TAKE,
    REJECT_UNKNOWN_MARKET,
    SELL,
    STP_CANCEL_BOTH,
    STP_CANCEL_MAKER,
    STP_CANCEL_TAKER,
    STP_DEFAULT,
    CancelAll,
    CancelOrder,
    Command,
    CommandRejected,
    Event,
    ExpireOrders,
    MoveOrder,
    OrderAccepted,
    OrderAmended,
    PlaceOrder,
    ReduceOrder,
    TradeExecuted,
)
from tests.engine.conftest import (
    BTC,
    BTC_USDT,
    CATALOG,
    ETH,
    ETH_USDT,
    T0,
    UNIT_SPEC,
    BookDriver,
    applied_tuples,
    done,
    ev,
    evs,
    lim,
    mbuy,
    msell,
    rejected,
    trade,
)

# --- LIMIT GTC ------------------------------------------------------------------------------------


def test_gtc_rests_on_an_empty_book() -> None:
    d = BookDriver()
    b = lim(1, 1, BUY, 100, 5)
    s = lim(2, 2, SELL, 101, 3)
    assert evs(d.place(b)) == evs([OrderAccepted(b)])
    assert evs(d.place(s)) == evs([OrderAccepted(s)])
    assert d.l2() == ([(100, 5, 1)], [(101, 3, 1)])
    assert d.book.best_bid() == 100 and d.book.best_ask() == 101
    assert d.l3(BUY) == [(1, 100, 5)] and d.l3(SELL) == [(2, 101, 3)]
    assert len(d.book) == 2


def test_gtc_partial_fill_trades_at_the_makers_price_and_rests_the_rest() -> None:
    d = BookDriver()
    maker = lim(1, 1, SELL, 100, 3)
    d.placed(maker)
    taker = lim(2, 2, BUY, 101, 5)
    assert evs(d.place(taker)) == evs(
        [
            OrderAccepted(taker),
            trade(1, 100, 3, taker, maker, 2, 0),
            done(maker, DONE_FILLED, DETAIL_NONE, filled=3, filled_quote=3000),
        ]
    )
    # the trade's money: 100 ticks x 3 lots x 10 = 3000 quote units; 3 lots x 1000 = 3000 base units
    assert d.l2() == ([(101, 2, 1)], [])
    [rest] = d.book.iter_orders(BUY)
    assert (rest.remaining, rest.filled, rest.filled_quote, rest.amount) == (2, 3, 3000, 5)


def test_gtc_full_fill_of_the_taker_leaves_the_maker_partly_filled() -> None:
    d = BookDriver()
    maker = lim(1, 1, SELL, 100, 5)
    d.placed(maker)
    taker = lim(2, 2, BUY, 105, 3)
    assert evs(d.place(taker)) == evs(
        [
            OrderAccepted(taker),
            trade(1, 100, 3, taker, maker, 0, 2),
            done(taker, DONE_FILLED, DETAIL_NONE, filled=3, filled_quote=3000),
        ]
    )
    assert d.l2() == ([], [(100, 2, 1)])


def test_sell_taker_trades_at_the_higher_resting_bid() -> None:
    d = BookDriver()
    maker = lim(1, 1, BUY, 105, 2)
    d.placed(maker)
    taker = lim(2, 2, SELL, 100, 2)
    assert evs(d.place(taker)) == evs(
        [
            OrderAccepted(taker),
            trade(1, 105, 2, taker, maker, 0, 0),
            done(maker, DONE_FILLED, DETAIL_NONE, filled=2, filled_quote=2100),
            done(taker, DONE_FILLED, DETAIL_NONE, filled=2, filled_quote=2100),
        ]
    )
    assert d.l2() == ([], [])
    assert len(d.book) == 0


def test_price_time_priority_better_price_first_then_earlier_order() -> None:
    d = BookDriver()
    a1 = lim(1, 1, SELL, 100, 2)
    a2 = lim(2, 2, SELL, 100, 2)
    a3 = lim(3, 3, SELL, 99, 2)
    a4 = lim(4, 4, SELL, 101, 2)
    d.placed(a1, a2, a3, a4)
    assert d.l3(SELL) == [(3, 99, 2), (1, 100, 2), (2, 100, 2), (4, 101, 2)]
    taker = lim(9, 9, BUY, 100, 5)
    assert evs(d.place(taker)) == evs(
        [
            OrderAccepted(taker),
            trade(1, 99, 2, taker, a3, 3, 0),
            done(a3, DONE_FILLED, DETAIL_NONE, filled=2, filled_quote=1980),
            trade(2, 100, 2, taker, a1, 1, 0),
            done(a1, DONE_FILLED, DETAIL_NONE, filled=2, filled_quote=2000),
            trade(3, 100, 1, taker, a2, 0, 1),
            done(taker, DONE_FILLED, DETAIL_NONE, filled=5, filled_quote=4980),
        ]
    )
    assert d.l3(SELL) == [(2, 100, 1), (4, 101, 2)]


def test_bids_priority_highest_first() -> None:
    d = BookDriver()
    b1 = lim(1, 1, BUY, 98, 1)
    b2 = lim(2, 2, BUY, 99, 1)
    b3 = lim(3, 3, BUY, 99, 1)
    d.placed(b1, b2, b3)
    taker = msell(4, 4, 3)
    out = d.place(taker)
    assert [(e.maker_order_id, e.price) for e in out if isinstance(e, TradeExecuted)] == [
        (2, 99),
        (3, 99),
        (1, 98),
    ]
    assert ev(out[-1]) == ev(done(taker, DONE_FILLED, DETAIL_NONE, filled=3, filled_quote=2960))


# --- IOC / FOK ------------------------------------------------------------------------------------


def test_ioc_fills_what_it_can_and_cancels_the_remainder() -> None:
    d = BookDriver()
    maker = lim(1, 1, SELL, 100, 2)
    far = lim(2, 1, SELL, 110, 5)
    d.placed(maker, far)
    taker = lim(3, 2, BUY, 105, 5, IOC)
    assert evs(d.place(taker)) == evs(
        [
            OrderAccepted(taker),
            trade(1, 100, 2, taker, maker, 3, 0),
            done(maker, DONE_FILLED, DETAIL_NONE, filled=2, filled_quote=2000),
            done(taker, DONE_CANCELED, DETAIL_IOC_REMAINDER, filled=2, filled_quote=2000),
        ]
    )
    assert d.l2() == ([], [(110, 5, 1)])


def test_ioc_without_a_match_is_canceled_and_never_rests() -> None:
    d = BookDriver()
    d.placed(lim(1, 1, SELL, 100, 2))
    taker = lim(2, 2, BUY, 99, 5, IOC)
    assert evs(d.place(taker)) == evs(
        [OrderAccepted(taker), done(taker, DONE_CANCELED, DETAIL_IOC_REMAINDER)]
    )
    assert d.l2() == ([], [(100, 2, 1)])


def test_ioc_completely_filled_is_filled() -> None:
    d = BookDriver()
    maker = lim(1, 1, SELL, 100, 4)
    d.placed(maker)
    taker = lim(2, 2, BUY, 100, 4, IOC)
    assert evs(d.place(taker))[-1] == ev(done(taker, DONE_FILLED, DETAIL_NONE, filled=4, filled_quote=4000))


def test_fok_fills_completely_across_levels() -> None:
    d = BookDriver()
    a = lim(1, 1, SELL, 100, 2)
    b = lim(2, 1, SELL, 101, 2)
    d.placed(a, b)
    taker = lim(3, 2, BUY, 101, 3, FOK)
    assert evs(d.place(taker)) == evs(
        [
            OrderAccepted(taker),
            trade(1, 100, 2, taker, a, 1, 0),
            done(a, DONE_FILLED, DETAIL_NONE, filled=2, filled_quote=2000),
            trade(2, 101, 1, taker, b, 0, 1),
            done(taker, DONE_FILLED, DETAIL_NONE, filled=3, filled_quote=3010),
        ]
    )
    assert d.l2() == ([], [(101, 1, 1)])


@pytest.mark.parametrize(
    ("price", "amount"),
    [(101, 5), (100, 3), (99, 1)],  # not enough within the limit / limit below the best ask
)
def test_fok_not_fillable_is_rejected_without_any_trade(price: int, amount: int) -> None:
    d = BookDriver()
    d.placed(lim(1, 1, SELL, 100, 2), lim(2, 1, SELL, 101, 2), lim(3, 1, SELL, 102, 9))
    before = d.view()
    taker = lim(4, 2, BUY, price, amount, FOK)
    assert evs(d.place(taker)) == evs(
        [OrderAccepted(taker), done(taker, DONE_REJECTED, DETAIL_FOK_NOT_FILLABLE)]
    )
    assert d.view() == before  # untouched, the trade id counter included


def test_fok_sell_exactly_fillable() -> None:
    d = BookDriver()
    b1 = lim(1, 1, BUY, 100, 2)
    b2 = lim(2, 1, BUY, 99, 3)
    d.placed(b1, b2)
    taker = lim(3, 2, SELL, 99, 5, FOK)
    out = evs(d.place(taker))
    assert out[-1] == ev(done(taker, DONE_FILLED, DETAIL_NONE, filled=5, filled_quote=2000 + 2970))
    assert d.l2() == ([], [])


# --- GTD ------------------------------------------------------------------------------------------


def test_gtd_rests_and_expires_by_expire_orders_at_its_time() -> None:
    d = BookDriver()
    g = lim(1, 1, BUY, 100, 5, GTD, expire_at=T0 + 50)
    d.placed(g)
    assert d.l2() == ([(100, 5, 1)], [])
    assert d.expire(T0 + 49) == []
    assert d.l2() == ([(100, 5, 1)], [])
    assert evs(d.expire(T0 + 50)) == evs([done(g, DONE_EXPIRED, DETAIL_EXPIRE_TIME)])
    assert d.l2() == ([], []) and len(d.book) == 0
    assert d.expire(T0 + 100) == []


def test_gtd_partly_filled_expires_with_its_remainder() -> None:
    d = BookDriver()
    g = lim(1, 1, SELL, 100, 5, GTD, expire_at=T0 + 10)
    d.placed(g)
    t = lim(2, 2, BUY, 100, 2, IOC)
    d.place(t)
    assert evs(d.expire(T0 + 11)) == evs(
        [done(g, DONE_EXPIRED, DETAIL_EXPIRE_TIME, filled=2, filled_quote=2000)]
    )


def test_gtd_expires_lazily_before_any_later_command_on_the_book() -> None:
    d = BookDriver()
    g = lim(1, 1, SELL, 100, 5, GTD, expire_at=T0 + 10)
    other = lim(2, 3, SELL, 101, 1)
    d.placed(g, other)
    taker = lim(3, 2, BUY, 101, 2)
    # at expire_at the GTD order is gone first: the buy trades with the next order, not with it
    assert evs(d.place(taker, T0 + 10)) == evs(
        [
            done(g, DONE_EXPIRED, DETAIL_EXPIRE_TIME),
            OrderAccepted(taker),
            trade(1, 101, 1, taker, other, 1, 0),
            done(other, DONE_FILLED, DETAIL_NONE, filled=1, filled_quote=1010),
        ]
    )
    assert d.l2() == ([(101, 1, 1)], [])


@pytest.mark.parametrize("command", ["cancel", "cancel_all", "reduce", "move"])
def test_gtd_expires_lazily_on_every_kind_of_command(command: str) -> None:
    d = BookDriver()
    g = lim(1, 1, SELL, 100, 5, GTD, expire_at=T0 + 10)
    keep = lim(2, 2, SELL, 105, 5)
    d.placed(g, keep)
    later = T0 + 20
    expired = ev(done(g, DONE_EXPIRED, DETAIL_EXPIRE_TIME))
    if command == "cancel":
        out = d.cancel(2, 2, later)
        assert evs(out) == [expired, ev(done(keep, DONE_CANCELED, DETAIL_USER_CANCEL))]
    elif command == "cancel_all":
        out = d.cancel_all(2, 0, later)
        assert evs(out) == [expired, ev(done(keep, DONE_CANCELED, DETAIL_CANCEL_ALL))]
    elif command == "reduce":
        # reducing the expired order itself: it is gone by then
        out = d.reduce(1, 1, 2, later)
        assert evs(out) == [expired, ev(rejected(1, 1, REJECT_ORDER_NOT_FOUND))]
    else:
        out = d.move(2, 2, 104, later)
        assert evs(out) == [expired, ev(OrderAmended(2, 2, SELL, 104, 5, 5, 105, 5, False))]
    assert 1 not in d.book.orders


def test_gtd_expiry_order_is_by_time_then_order_id() -> None:
    d = BookDriver()
    g9 = lim(9, 1, BUY, 100, 1, GTD, expire_at=T0 + 50)
    g10 = lim(10, 1, BUY, 99, 1, GTD, expire_at=T0 + 40)
    g5 = lim(5, 2, SELL, 120, 1, GTD, expire_at=T0 + 50)
    g6 = lim(6, 2, SELL, 121, 1, GTD, expire_at=T0 + 60)
    d.placed(g9, g10, g5, g6)
    assert evs(d.expire(T0 + 55)) == evs(
        [
            done(g10, DONE_EXPIRED, DETAIL_EXPIRE_TIME),
            done(g5, DONE_EXPIRED, DETAIL_EXPIRE_TIME),
            done(g9, DONE_EXPIRED, DETAIL_EXPIRE_TIME),
        ]
    )
    assert d.l3(SELL) == [(6, 121, 1)]


@pytest.mark.parametrize("delta", [0, -1, -1000])
def test_gtd_arriving_expired_is_done_expired(delta: int) -> None:
    d = BookDriver()
    d.placed(lim(1, 1, SELL, 100, 5))
    before = d.view()
    g = lim(2, 2, BUY, 100, 5, GTD, expire_at=T0 + delta)
    assert evs(d.place(g)) == evs([OrderAccepted(g), done(g, DONE_EXPIRED, DETAIL_EXPIRE_TIME)])
    assert d.view() == before


def test_gtd_moved_and_reduced_still_expires_once() -> None:
    d = BookDriver()
    g = lim(1, 1, BUY, 100, 5, GTD, expire_at=T0 + 30)
    d.placed(g)
    d.move(1, 1, 101)
    d.move(1, 1, 102)
    d.reduce(1, 1, 4)
    assert evs(d.expire(T0 + 30)) == evs([done(g, DONE_EXPIRED, DETAIL_EXPIRE_TIME, price=102, amount=4)])
    assert d.expire(T0 + 31) == [] and len(d.book) == 0


# --- MARKET ---------------------------------------------------------------------------------------


def test_market_sell_by_amount_sweeps_bids_best_first() -> None:
    d = BookDriver()
    b1 = lim(1, 1, BUY, 100, 2)
    b2 = lim(2, 1, BUY, 98, 2)
    d.placed(b1, b2)
    taker = msell(3, 2, 3)
    assert evs(d.place(taker)) == evs(
        [
            OrderAccepted(taker),
            trade(1, 100, 2, taker, b1, 1, 0),
            done(b1, DONE_FILLED, DETAIL_NONE, filled=2, filled_quote=2000),
            trade(2, 98, 1, taker, b2, 0, 1),
            done(taker, DONE_FILLED, DETAIL_NONE, filled=3, filled_quote=2980),
        ]
    )
    assert d.l2() == ([(98, 1, 1)], [])


def test_market_sell_larger_than_the_book_cancels_the_rest() -> None:
    d = BookDriver()
    b1 = lim(1, 1, BUY, 100, 2)
    d.placed(b1)
    taker = msell(2, 2, 5)
    assert evs(d.place(taker))[-1] == ev(
        done(taker, DONE_CANCELED, DETAIL_IOC_REMAINDER, filled=2, filled_quote=2000)
    )
    assert d.l2() == ([], [])


def test_market_orders_on_an_empty_side_have_no_liquidity() -> None:
    d = BookDriver()
    d.placed(lim(1, 1, BUY, 100, 2))
    s = msell(2, 2, 5, market=BTC)
    b = mbuy(3, 2, 10**6)
    assert evs(d.place(b)) == evs([OrderAccepted(b), done(b, DONE_CANCELED, DETAIL_NO_LIQUIDITY)])
    d2 = BookDriver()
    assert evs(d2.place(s)) == evs([OrderAccepted(s), done(s, DONE_CANCELED, DETAIL_NO_LIQUIDITY)])


def test_market_buy_spends_the_budget_level_by_level_with_exact_arithmetic() -> None:
    d = BookDriver()
    a1 = lim(1, 1, SELL, 100, 3)  # one lot costs 100 x 10 = 1000 quote units
    a2 = lim(2, 1, SELL, 101, 2)  # 1010
    a3 = lim(3, 1, SELL, 103, 5)  # 1030
    d.placed(a1, a2, a3)
    budget = 3 * 1000 + 1 * 1010 + 505
    taker = mbuy(4, 2, budget)
    # level 100: 4515 // 1000 = 4 lots affordable, 3 there; level 101: 1515 // 1010 = 1 lot;
    # 505 left buys nothing at 101 (1010 per lot): the order is done and returns 505.
    assert evs(d.place(taker)) == evs(
        [
            OrderAccepted(taker),
            trade(1, 100, 3, taker, a1, 0, 0, budget=1515),
            done(a1, DONE_FILLED, DETAIL_NONE, filled=3, filled_quote=3000),
            trade(2, 101, 1, taker, a2, 0, 1, budget=505),
            done(taker, DONE_FILLED, DETAIL_NONE, filled=4, filled_quote=4010, budget=505, remaining=0),
        ]
    )
    assert d.l2() == ([], [(101, 1, 1), (103, 5, 1)])


def test_market_buy_lots_per_level_are_budget_floor_divided_by_lot_cost() -> None:
    d = BookDriver(UNIT_SPEC)  # 1 quote unit per tick x lot
    a1 = lim(1, 1, SELL, 7, 10, market="A_Q")
    a2 = lim(2, 1, SELL, 9, 10, market="A_Q")
    d.placed(a1, a2)
    taker = mbuy(3, 2, 50, market="A_Q")
    out = d.place(taker)
    # 50 // 7 = 7 lots at 7 (49 spent); 1 // 9 = 0: done, 1 returned
    assert evs(out) == evs(
        [
            OrderAccepted(taker),
            trade(1, 7, 7, taker, a1, 0, 3, spec=UNIT_SPEC, budget=1),
            done(
                taker, DONE_FILLED, DETAIL_NONE, created=T0, filled=7, filled_quote=49, budget=1, remaining=0
            ),
        ]
    )


def test_market_buy_larger_than_the_book_returns_the_unspent_budget() -> None:
    d = BookDriver()
    a1 = lim(1, 1, SELL, 100, 2)
    d.placed(a1)
    taker = mbuy(2, 2, 10_000)
    assert evs(d.place(taker)) == evs(
        [
            OrderAccepted(taker),
            trade(1, 100, 2, taker, a1, 0, 0, budget=8000),
            done(a1, DONE_FILLED, DETAIL_NONE, filled=2, filled_quote=2000),
            done(
                taker,
                DONE_CANCELED,
                DETAIL_IOC_REMAINDER,
                filled=2,
                filled_quote=2000,
                budget=8000,
                remaining=0,
            ),
        ]
    )
    assert d.l2() == ([], []) and len(d.book) == 0  # never rests


def test_market_buy_exactly_spending_the_budget_is_filled() -> None:
    d = BookDriver()
    a1 = lim(1, 1, SELL, 100, 2)
    d.placed(a1)
    taker = mbuy(2, 2, 2000)
    assert evs(d.place(taker))[-1] == ev(
        done(taker, DONE_FILLED, DETAIL_NONE, filled=2, filled_quote=2000, budget=0, remaining=0)
    )


def test_market_buy_too_small_for_one_lot_keeps_its_budget() -> None:
    d = BookDriver()
    d.placed(lim(1, 1, SELL, 100, 2))
    before = d.view()
    taker = mbuy(2, 2, 999)
    assert evs(d.place(taker)) == evs([OrderAccepted(taker), done(taker, DONE_CANCELED, DETAIL_NO_LIQUIDITY)])
    assert d.view() == before


# --- MARKET BUY by amount (within a budget) -------------------------------------------------------


def mbuyq(order_id: int, user: int, lots: int, budget: int) -> PlaceOrder:
    """A market buy of `lots` spending at most `budget` quote units."""
    return PlaceOrder(order_id, user, BTC, BUY, MARKET, IOC, amount=lots, quote_budget=budget)


def test_market_buy_by_amount_stops_at_its_amount_and_returns_the_budget_left() -> None:
    d = BookDriver()
    a1 = lim(1, 1, SELL, 100, 2)  # 1000 quote units a lot
    a2 = lim(2, 1, SELL, 101, 3)  # 1010
    d.placed(a1, a2)
    taker = mbuyq(3, 2, 3, 10_000)
    # 2 lots at 100 (2000), then 1 at 101 (1010): the amount is reached with 6990 of the budget left.
    assert evs(d.place(taker)) == evs(
        [
            OrderAccepted(taker),
            trade(1, 100, 2, taker, a1, 1, 0, budget=8000),
            done(a1, DONE_FILLED, DETAIL_NONE, filled=2, filled_quote=2000),
            trade(2, 101, 1, taker, a2, 0, 2, budget=6990),
            done(taker, DONE_FILLED, DETAIL_NONE, filled=3, filled_quote=3010, budget=6990, remaining=0),
        ]
    )
    assert d.l2() == ([], [(101, 2, 1)])


def test_market_buy_by_amount_stopped_by_its_budget_cancels_the_rest() -> None:
    d = BookDriver()
    a1 = lim(1, 1, SELL, 100, 2)
    a2 = lim(2, 1, SELL, 110, 5)  # 1100 a lot: above what the budget allows
    d.placed(a1, a2)
    taker = mbuyq(3, 2, 4, 3000)
    # 2 lots at 100 (2000); 1000 left cannot buy a lot at 110: 2 of 4 lots filled, the rest canceled.
    assert evs(d.place(taker)) == evs(
        [
            OrderAccepted(taker),
            trade(1, 100, 2, taker, a1, 2, 0, budget=1000),
            done(a1, DONE_FILLED, DETAIL_NONE, filled=2, filled_quote=2000),
            done(taker, DONE_CANCELED, DETAIL_IOC_REMAINDER, filled=2, filled_quote=2000, budget=1000),
        ]
    )
    assert d.l2() == ([], [(110, 5, 1)])


def test_market_buy_by_amount_within_one_level_takes_exactly_the_amount() -> None:
    d = BookDriver()
    a1 = lim(1, 1, SELL, 100, 10)
    d.placed(a1)
    taker = mbuyq(2, 2, 3, 3000)  # budget and amount reached together: filled, nothing returned
    assert evs(d.place(taker)) == evs(
        [
            OrderAccepted(taker),
            trade(1, 100, 3, taker, a1, 0, 7, budget=0),
            done(taker, DONE_FILLED, DETAIL_NONE, filled=3, filled_quote=3000, budget=0, remaining=0),
        ]
    )


def test_market_buy_by_amount_larger_than_the_book_cancels_the_rest() -> None:
    d = BookDriver()
    a1 = lim(1, 1, SELL, 100, 2)
    d.placed(a1)
    taker = mbuyq(2, 2, 5, 10**6)
    assert evs(d.place(taker))[-1] == ev(
        done(taker, DONE_CANCELED, DETAIL_IOC_REMAINDER, filled=2, filled_quote=2000, budget=10**6 - 2000)
    )
    assert d.l2() == ([], []) and len(d.book) == 0


def test_market_buy_by_amount_that_cannot_afford_one_lot_changes_nothing() -> None:
    d = BookDriver()
    d.placed(lim(1, 1, SELL, 100, 2))
    before = d.view()
    taker = mbuyq(2, 2, 1, 999)
    assert evs(d.place(taker)) == evs([OrderAccepted(taker), done(taker, DONE_CANCELED, DETAIL_NO_LIQUIDITY)])
    assert d.view() == before


def test_market_buy_by_amount_without_a_budget_is_rejected() -> None:
    d = BookDriver()
    d.placed(lim(1, 1, SELL, 100, 2))
    before = d.view()
    taker = mbuyq(2, 2, 1, 0)
    assert evs(d.place(taker)) == evs([OrderAccepted(taker), done(taker, DONE_REJECTED, DETAIL_INVALID)])
    assert d.view() == before


# --- post-only ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("side", "price"), [(BUY, 101), (BUY, 102), (SELL, 99), (SELL, 98)])
def test_post_only_that_would_take_is_rejected(side: int, price: int) -> None:
    d = BookDriver()
    d.placed(lim(1, 1, BUY, 99, 1), lim(2, 1, SELL, 101, 1))
    before = d.view()
    p = lim(3, 2, side, price, 1, post_only=True)
    assert evs(d.place(p)) == evs([OrderAccepted(p), done(p, DONE_REJECTED, DETAIL_POST_ONLY_WOULD_TAKE)])
    assert d.view() == before


def test_post_only_that_would_not_take_rests() -> None:
    d = BookDriver()
    d.placed(lim(1, 1, BUY, 99, 1), lim(2, 1, SELL, 101, 1))
    p = lim(3, 2, BUY, 100, 4, post_only=True)
    q = lim(4, 2, SELL, 100 + 1, 4, post_only=True)
    d.placed(p, q)
    assert d.l2() == ([(100, 4, 1), (99, 1, 1)], [(101, 5, 2)])


# --- self-trade prevention ------------------------------------------------------------------------


def _stp_book() -> tuple[BookDriver, list[PlaceOrder]]:
    """u2 sells 1 @ 99, then u1 2 @ 100, then u2 2 @ 100; u1 will buy."""
    d = BookDriver()
    o1 = lim(1, 2, SELL, 99, 1)
    o2 = lim(2, 1, SELL, 100, 2)
    o3 = lim(3, 2, SELL, 100, 2)
    d.placed(o1, o2, o3)
    return d, [o1, o2, o3]


def test_stp_cancel_taker_stops_at_the_own_order() -> None:
    d, (o1, _o2, _o3) = _stp_book()
    t = lim(9, 1, BUY, 100, 4, stp=STP_CANCEL_TAKER)
    assert evs(d.place(t)) == evs(
        [
            OrderAccepted(t),
            trade(1, 99, 1, t, o1, 3, 0),
            done(o1, DONE_FILLED, DETAIL_NONE, filled=1, filled_quote=990),
            done(t, DONE_CANCELED, DETAIL_SELF_TRADE, filled=1, filled_quote=990),
        ]
    )
    assert d.l3(SELL) == [(2, 100, 2), (3, 100, 2)] and d.l3(BUY) == []


@pytest.mark.parametrize("stp", [STP_CANCEL_MAKER, STP_DEFAULT])
def test_stp_cancel_maker_cancels_the_own_order_and_goes_on(stp: int) -> None:
    d, (o1, o2, o3) = _stp_book()
    t = lim(9, 1, BUY, 100, 4, stp=stp)
    assert evs(d.place(t)) == evs(
        [
            OrderAccepted(t),
            trade(1, 99, 1, t, o1, 3, 0),
            done(o1, DONE_FILLED, DETAIL_NONE, filled=1, filled_quote=990),
            done(o2, DONE_CANCELED, DETAIL_SELF_TRADE),
            trade(2, 100, 2, t, o3, 1, 0),
            done(o3, DONE_FILLED, DETAIL_NONE, filled=2, filled_quote=2000),
        ]
    )
    assert d.l2() == ([(100, 1, 1)], [])


def test_stp_cancel_both() -> None:
    d, (o1, o2, _o3) = _stp_book()
    t = lim(9, 1, BUY, 100, 4, stp=STP_CANCEL_BOTH)
    assert evs(d.place(t)) == evs(
        [
            OrderAccepted(t),
            trade(1, 99, 1, t, o1, 3, 0),
            done(o1, DONE_FILLED, DETAIL_NONE, filled=1, filled_quote=990),
            done(o2, DONE_CANCELED, DETAIL_SELF_TRADE),
            done(t, DONE_CANCELED, DETAIL_SELF_TRADE, filled=1, filled_quote=990),
        ]
    )
    assert d.l3(SELL) == [(3, 100, 2)] and d.l3(BUY) == []


def test_stp_fok_with_cancel_taker_is_not_fillable() -> None:
    d, _ = _stp_book()
    before = d.view()
    t = lim(9, 1, BUY, 100, 3, FOK, stp=STP_CANCEL_TAKER)
    assert evs(d.place(t)) == evs([OrderAccepted(t), done(t, DONE_REJECTED, DETAIL_FOK_NOT_FILLABLE)])
    assert d.view() == before


def test_stp_fok_with_cancel_maker_skips_own_liquidity() -> None:
    d, (o1, o2, o3) = _stp_book()
    before = d.view()
    t = lim(9, 1, BUY, 100, 4, FOK, stp=STP_CANCEL_MAKER)  # 1 + 2 others' lots < 4
    assert evs(d.place(t)) == evs([OrderAccepted(t), done(t, DONE_REJECTED, DETAIL_FOK_NOT_FILLABLE)])
    assert d.view() == before  # the own order was not canceled either
    t = lim(10, 1, BUY, 100, 3, FOK, stp=STP_CANCEL_MAKER)
    assert evs(d.place(t)) == evs(
        [
            OrderAccepted(t),
            trade(1, 99, 1, t, o1, 2, 0),
            done(o1, DONE_FILLED, DETAIL_NONE, filled=1, filled_quote=990),
            done(o2, DONE_CANCELED, DETAIL_SELF_TRADE),
            trade(2, 100, 2, t, o3, 0, 0),
            done(o3, DONE_FILLED, DETAIL_NONE, filled=2, filled_quote=2000),
            done(t, DONE_FILLED, DETAIL_NONE, filled=3, filled_quote=2990),
        ]
    )
    assert d.l2() == ([], [])


def test_stp_market_orders() -> None:
    d, (o1, _o2, _o3) = _stp_book()
    t = mbuy(9, 1, 10_000, stp=STP_CANCEL_TAKER)
    assert evs(d.place(t)) == evs(
        [
            OrderAccepted(t),
            trade(1, 99, 1, t, o1, 0, 0, budget=9010),
            done(o1, DONE_FILLED, DETAIL_NONE, filled=1, filled_quote=990),
            done(t, DONE_CANCELED, DETAIL_SELF_TRADE, filled=1, filled_quote=990, budget=9010, remaining=0),
        ]
    )
    # a market sell by the owner of every bid: all its makers are canceled, nothing traded
    d = BookDriver()
    b1, b2 = lim(1, 1, BUY, 100, 1), lim(2, 1, BUY, 99, 1)
    d.placed(b1, b2)
    s = msell(3, 1, 2)
    assert evs(d.place(s)) == evs(
        [
            OrderAccepted(s),
            done(b1, DONE_CANCELED, DETAIL_SELF_TRADE),
            done(b2, DONE_CANCELED, DETAIL_SELF_TRADE),
            done(s, DONE_CANCELED, DETAIL_NO_LIQUIDITY),
        ]
    )


def test_own_orders_on_both_sides_without_crossing_do_not_interact() -> None:
    d = BookDriver()
    d.placed(lim(1, 1, BUY, 99, 1), lim(2, 1, SELL, 100, 1))
    assert d.l2() == ([(99, 1, 1)], [(100, 1, 1)])


# --- cancel / cancel-all --------------------------------------------------------------------------


def test_cancel_removes_the_order_with_its_remainder() -> None:
    d = BookDriver()
    o = lim(1, 1, SELL, 100, 5)
    o2 = lim(2, 3, SELL, 100, 1)
    d.placed(o, o2)
    d.place(lim(3, 2, BUY, 100, 2))
    assert evs(d.cancel(1, 1)) == evs(
        [done(o, DONE_CANCELED, DETAIL_USER_CANCEL, filled=2, filled_quote=2000)]
    )
    assert d.l2() == ([], [(100, 1, 1)])
    assert evs(d.cancel(1, 1)) == evs([rejected(1, 1, REJECT_ORDER_NOT_FOUND)])


def test_cancel_rejections_leave_the_book_unchanged() -> None:
    d = BookDriver()
    d.placed(lim(1, 1, SELL, 100, 5))
    before = d.view()
    assert evs(d.cancel(77, 1)) == evs([rejected(77, 1, REJECT_ORDER_NOT_FOUND)])
    assert evs(d.cancel(1, 2)) == evs([rejected(1, 2, REJECT_NOT_OWNER)])
    assert d.view() == before


def test_cancel_all_only_that_user_in_order_id_order() -> None:
    d = BookDriver()
    o7 = lim(7, 1, SELL, 110, 1)
    o3 = lim(3, 1, BUY, 90, 1)
    o5 = lim(5, 1, BUY, 95, 1)
    o4 = lim(4, 2, BUY, 95, 1)
    d.placed(o7, o3, o5, o4)
    assert evs(d.cancel_all(1)) == evs(
        [
            done(o3, DONE_CANCELED, DETAIL_CANCEL_ALL),
            done(o5, DONE_CANCELED, DETAIL_CANCEL_ALL),
            done(o7, DONE_CANCELED, DETAIL_CANCEL_ALL),
        ]
    )
    assert d.l3(BUY) == [(4, 95, 1)] and d.l3(SELL) == []
    assert d.cancel_all(1) == []


@pytest.mark.parametrize("side", [BUY, SELL])
def test_cancel_all_of_one_side(side: int) -> None:
    d = BookDriver()
    o7 = lim(7, 1, SELL, 110, 1)
    o3 = lim(3, 1, BUY, 90, 1)
    o5 = lim(5, 1, BUY, 95, 1)
    o8 = lim(8, 2, SELL, 111, 1)
    d.placed(o7, o3, o5, o8)
    expected, left = ([o3, o5], [7, 8]) if side == BUY else ([o7], [3, 5, 8])
    assert evs(d.cancel_all(1, side)) == evs([done(o, DONE_CANCELED, DETAIL_CANCEL_ALL) for o in expected])
    assert sorted(d.book.orders) == left


# --- reduce ---------------------------------------------------------------------------------------


def test_reduce_keeps_time_priority() -> None:
    d = BookDriver()
    o1 = lim(1, 1, SELL, 100, 5)
    o2 = lim(2, 2, SELL, 100, 5)
    d.placed(o1, o2)
    assert evs(d.reduce(1, 1, 3)) == evs([OrderAmended(1, 1, SELL, 100, 3, 3, 100, 5, True)])
    assert d.l2() == ([], [(100, 8, 2)])
    assert d.l3(SELL) == [(1, 100, 3), (2, 100, 5)]
    t = lim(3, 3, BUY, 100, 4)
    out = d.place(t)
    assert evs(out) == evs(
        [
            OrderAccepted(t),
            trade(1, 100, 3, t, o1, 1, 0),
            done(o1, DONE_FILLED, DETAIL_NONE, amount=3, filled=3, filled_quote=3000),
            trade(2, 100, 1, t, o2, 0, 4),
            done(t, DONE_FILLED, DETAIL_NONE, filled=4, filled_quote=4000),
        ]
    )


def test_reduce_of_a_partly_filled_order_counts_the_filled_part() -> None:
    d = BookDriver()
    o1 = lim(1, 1, SELL, 100, 5)
    d.placed(o1)
    d.place(lim(2, 2, BUY, 100, 2))  # filled 2, open 3
    assert evs(d.reduce(1, 1, 4)) == evs([OrderAmended(1, 1, SELL, 100, 4, 2, 100, 3, True)])
    assert d.l2() == ([], [(100, 2, 1)])
    # reducing to what is filled (or less) cancels the order; its Done carries what was open
    assert evs(d.reduce(1, 1, 2)) == evs(
        [done(o1, DONE_CANCELED, DETAIL_REDUCED_TO_ZERO, amount=4, filled=2, filled_quote=2000)]
    )
    assert d.l2() == ([], []) and len(d.book) == 0


@pytest.mark.parametrize("new_amount", [0, 1])
def test_reduce_to_filled_or_below_cancels(new_amount: int) -> None:
    d = BookDriver()
    o1 = lim(1, 1, BUY, 100, 5)
    d.placed(o1)
    d.place(lim(2, 2, SELL, 100, 1))
    assert evs(d.reduce(1, 1, new_amount)) == evs(
        [done(o1, DONE_CANCELED, DETAIL_REDUCED_TO_ZERO, filled=1, filled_quote=1000)]
    )


@pytest.mark.parametrize("new_amount", [5, 6, -1])
def test_reduce_to_the_same_or_more_or_negative_is_rejected(new_amount: int) -> None:
    d = BookDriver()
    d.placed(lim(1, 1, BUY, 100, 5))
    before = d.view()
    assert evs(d.reduce(1, 1, new_amount)) == evs([rejected(1, 1, REJECT_INVALID)])
    assert d.view() == before


def test_reduce_not_found_or_not_owner() -> None:
    d = BookDriver()
    d.placed(lim(1, 1, BUY, 100, 5))
    before = d.view()
    assert evs(d.reduce(2, 1, 1)) == evs([rejected(2, 1, REJECT_ORDER_NOT_FOUND)])
    assert evs(d.reduce(1, 2, 1)) == evs([rejected(1, 2, REJECT_NOT_OWNER)])
    assert d.view() == before


# --- move -----------------------------------------------------------------------------------------


def test_move_loses_time_priority() -> None:
    d = BookDriver()
    o1 = lim(1, 1, SELL, 100, 2)
    o2 = lim(2, 2, SELL, 101, 2)
    d.placed(o1, o2)
    assert evs(d.move(1, 1, 101)) == evs([OrderAmended(1, 1, SELL, 101, 2, 2, 100, 2, False)])
    assert d.l3(SELL) == [(2, 101, 2), (1, 101, 2)]
    assert d.l2() == ([], [(101, 4, 2)])
    t = lim(3, 3, BUY, 101, 3)
    out = evs(d.place(t))
    assert [(e[1], e[9]) for e in out if e[0] == "trade"] == [(1, 2), (2, 1)]  # (trade id, maker)


def test_move_to_the_same_price_goes_to_the_back() -> None:
    d = BookDriver()
    d.placed(lim(1, 1, BUY, 100, 2), lim(2, 2, BUY, 100, 2))
    d.move(1, 1, 100)
    assert d.l3(BUY) == [(2, 100, 2), (1, 100, 2)]


def test_move_across_the_spread_trades_as_taker_and_rests_the_rest() -> None:
    d = BookDriver()
    o1 = lim(1, 1, BUY, 99, 5, maker_fee_ppm=1000, taker_fee_ppm=2000)
    o2 = lim(2, 2, SELL, 101, 2, maker_fee_ppm=1000, taker_fee_ppm=2000)
    d.placed(o1, o2)
    assert evs(d.move(1, 1, 102)) == evs(
        [
            OrderAmended(1, 1, BUY, 102, 5, 5, 99, 5, False),
            # the moved order is the taker (its taker rate, its limit 102); price is the maker's 101
            trade(1, 101, 2, o1, o2, 3, 0, taker_fee=4, maker_fee=3, taker_price=102),
            done(o2, DONE_FILLED, DETAIL_NONE, filled=2, filled_quote=2020),
        ]
    )
    assert d.l2() == ([(102, 3, 1)], [])


def test_move_across_fully_filled() -> None:
    d = BookDriver()
    o1 = lim(1, 1, SELL, 110, 2)
    o2 = lim(2, 2, BUY, 100, 5)
    d.placed(o1, o2)
    assert evs(d.move(1, 1, 95)) == evs(
        [
            OrderAmended(1, 1, SELL, 95, 2, 2, 110, 2, False),
            trade(1, 100, 2, o1, o2, 0, 3, taker_price=95),
            done(o1, DONE_FILLED, DETAIL_NONE, price=95, filled=2, filled_quote=2000),
        ]
    )
    assert d.l2() == ([(100, 3, 1)], [])


def test_post_only_move_that_would_cross_is_rejected_and_the_order_stays() -> None:
    d = BookDriver()
    d.placed(lim(1, 1, BUY, 99, 5, post_only=True), lim(2, 3, BUY, 99, 1), lim(3, 2, SELL, 101, 2))
    before = d.view()
    assert evs(d.move(1, 1, 101)) == evs([rejected(1, 1, REJECT_POST_ONLY_WOULD_TAKE)])
    assert d.view() == before
    assert d.l3(BUY) == [(1, 99, 5), (2, 99, 1)]  # priority kept too
    assert evs(d.move(1, 1, 100)) == evs([OrderAmended(1, 1, BUY, 100, 5, 5, 99, 5, False)])


@pytest.mark.parametrize("price", [0, -5])
def test_move_to_a_non_positive_price_is_rejected(price: int) -> None:
    d = BookDriver()
    d.placed(lim(1, 1, BUY, 99, 5))
    before = d.view()
    assert evs(d.move(1, 1, price)) == evs([rejected(1, 1, REJECT_INVALID)])
    assert evs(d.move(1, 2, 98)) == evs([rejected(1, 2, REJECT_NOT_OWNER)])
    assert evs(d.move(8, 1, 98)) == evs([rejected(8, 1, REJECT_ORDER_NOT_FOUND)])
    assert d.view() == before


def test_move_with_self_trade_prevention() -> None:
    d = BookDriver()
    mine = lim(1, 1, BUY, 99, 2, stp=STP_CANCEL_TAKER)
    own_ask = lim(2, 1, SELL, 101, 2)
    d.placed(mine, own_ask)
    assert evs(d.move(1, 1, 101)) == evs(
        [
            OrderAmended(1, 1, BUY, 101, 2, 2, 99, 2, False),
            done(mine, DONE_CANCELED, DETAIL_SELF_TRADE, price=101),
        ]
    )
    assert d.l2() == ([], [(101, 2, 1)])


# --- depth ----------------------------------------------------------------------------------------


def test_l2_depth_merges_bids_down_and_asks_up() -> None:
    d = BookDriver()
    for i, (p, a) in enumerate([(1001, 1), (1005, 2), (1010, 3), (1019, 4), (1020, 5)], start=1):
        d.placed(lim(i, 1, BUY, p, a))
    for i, (p, a) in enumerate([(1021, 1), (1029, 2), (1030, 3), (1031, 4), (1050, 5)], start=10):
        d.placed(lim(i, 2, SELL, p, a))
    bids, asks = d.l2()
    assert bids == [(1020, 5, 1), (1019, 4, 1), (1010, 3, 1), (1005, 2, 1), (1001, 1, 1)]
    assert asks == [(1021, 1, 1), (1029, 2, 1), (1030, 3, 1), (1031, 4, 1), (1050, 5, 1)]
    assert d.l2(merge=10) == (
        [(1020, 5, 1), (1010, 7, 2), (1000, 3, 2)],
        [(1030, 6, 3), (1040, 4, 1), (1050, 5, 1)],
    )
    assert d.l2(limit=2, merge=10) == ([(1020, 5, 1), (1010, 7, 2)], [(1030, 6, 3), (1040, 4, 1)])
    assert d.l2(limit=1) == ([(1020, 5, 1)], [(1021, 1, 1)])
    assert d.l2(limit=0) == ([], [])


def test_l2_counts_live_orders_and_lots_after_changes() -> None:
    d = BookDriver()
    d.placed(lim(1, 1, SELL, 100, 5), lim(2, 2, SELL, 100, 5), lim(3, 3, SELL, 100, 5))
    d.cancel(2, 2)
    d.reduce(3, 3, 2)
    d.place(lim(4, 4, BUY, 100, 1))
    assert d.l2() == ([], [(100, 6, 2)])


def test_l3_iterates_in_priority_order() -> None:
    d = BookDriver()
    d.placed(
        lim(1, 1, BUY, 100, 1),
        lim(2, 1, BUY, 101, 2),
        lim(3, 1, BUY, 100, 3),
        lim(4, 1, SELL, 103, 4),
        lim(5, 1, SELL, 102, 5),
        lim(6, 1, SELL, 103, 6),
    )
    d.cancel(1, 1)
    d.placed(lim(7, 1, BUY, 100, 7))
    assert d.l3(BUY) == [(2, 101, 2), (3, 100, 3), (7, 100, 7)]
    assert d.l3(SELL) == [(5, 102, 5), (4, 103, 4), (6, 103, 6)]
    assert [o.order_id for o in d.book.user_orders(1)] == [2, 3, 4, 5, 6, 7]


# --- fees ---


def first_trade(events: list[Event]) -> TradeExecuted:
    trades = [e for e in events if isinstance(e, TradeExecuted)]
    assert trades
    return trades[0]


# --- fees -----------------------------------------------------------------------------------------


def test_fees_in_the_asset_received_rounded_up() -> None:
    d = BookDriver()
    # 1 lot at 3 ticks: quote 3 x 1 x 10 = 30 units, base 1000 units
    maker = lim(1, 1, SELL, 3, 1, maker_fee_ppm=1000, taker_fee_ppm=2000)
    taker = lim(2, 2, BUY, 3, 1, maker_fee_ppm=1000, taker_fee_ppm=1500)
    d.placed(maker)
    t = first_trade(d.place(taker))
    # buyer (taker) pays in base: 1000 x 0.0015 = 1.5 -> 2; seller (maker) in quote: 30 x 0.001 = 0.03 -> 1
    assert (t.quote_units, t.base_units, t.taker_fee, t.maker_fee) == (30, 1000, 2, 1)


def test_fees_sell_taker_pays_in_quote_buy_maker_in_base() -> None:
    d = BookDriver()
    maker = lim(1, 1, BUY, 3_000_000, 7, maker_fee_ppm=1000, taker_fee_ppm=2000)  # 30000.00 USDT
    taker = lim(2, 2, SELL, 3_000_000, 7, maker_fee_ppm=1000, taker_fee_ppm=2000)
    d.placed(maker)
    t = first_trade(d.place(taker))
    # quote 3_000_000 x 7 x 10 = 210_000_000 (2.1 USDT... in units of 1e-8 USDT), base 7000
    assert (t.quote_units, t.base_units) == (210_000_000, 7000)
    assert t.taker_fee == 420_000  # seller taker: 0.2 % of the quote received
    assert t.maker_fee == 7  # buyer maker: 0.1 % of 7000 base units
    assert BTC_USDT.format_quote(t.quote_units) == "2.1" and BTC_USDT.format_base(t.base_units) == "0.00007"


def test_zero_fee_rates_give_zero_fees_and_tiny_rates_round_up_to_one_unit() -> None:
    d = BookDriver()
    d.placed(lim(1, 1, SELL, 100, 1))
    t = first_trade(d.place(lim(2, 2, BUY, 100, 1)))
    assert (t.taker_fee, t.maker_fee) == (0, 0)
    d.placed(lim(3, 1, SELL, 100, 1, maker_fee_ppm=1))
    t = first_trade(d.place(lim(4, 2, BUY, 100, 1, taker_fee_ppm=1)))
    assert (t.taker_fee, t.maker_fee) == (1, 1)  # 1000 x 1e-6 and 1000 x 1e-6, both rounded up


def test_fees_use_each_orders_own_rates_per_role() -> None:
    d = BookDriver()
    maker = lim(1, 1, SELL, 100, 10, maker_fee_ppm=500, taker_fee_ppm=999_999)
    taker = lim(2, 2, BUY, 100, 10, maker_fee_ppm=999_999, taker_fee_ppm=2500)
    d.placed(maker)
    t = first_trade(d.place(taker))
    # quote 10_000 units, base 10_000 units
    assert (t.taker_fee, t.maker_fee) == (25, 5)


# --- trade ids --------------------------------------------------------------------------------------


def test_trade_ids_increase_per_market() -> None:
    eng = MatchingEngine("matching-0", [BTC_USDT, ETH_USDT])
    seq = 0

    def run(cmd: Command) -> list[Applied]:
        nonlocal seq
        seq += 1
        return eng.apply("acc", seq, T0 + seq, cmd)

    ids: dict[str, list[int]] = {BTC: [], ETH: []}
    for market in (BTC, ETH, BTC):
        base = 100 * seq + 10
        run(lim(base + 1, 1, SELL, 100, 1, market=market))
        run(lim(base + 2, 1, SELL, 101, 1, market=market))
        for a in run(lim(base + 3, 2, BUY, 101, 2, market=market)):
            ids[a.market] += [e.trade_id for e in a.events if isinstance(e, TradeExecuted)]
    assert ids == {BTC: [1, 2, 3, 4], ETH: [1, 2]}
    assert eng.books[BTC].next_trade_id == 5 and eng.books[ETH].next_trade_id == 3


# --- the engine -------------------------------------------------------------------------------------


def test_engine_ignores_resent_commands_per_source() -> None:
    eng = MatchingEngine("matching-0", [BTC_USDT])
    a = lim(1, 1, SELL, 100, 1)
    first = eng.apply("accounts-0", 1, T0, a)
    assert applied_tuples(first) == [(BTC, ev(OrderAccepted(a)))]
    h = eng.state_hash()
    assert eng.apply("accounts-0", 1, T0 + 1, lim(2, 1, SELL, 100, 1)) == []
    assert eng.apply("accounts-0", 0, T0 + 1, CancelOrder(1, 1, BTC)) == []
    assert eng.state_hash() == h and eng.event_seq == 1 and eng.last_time == T0
    # another source has its own numbering
    b = lim(2, 2, BUY, 100, 1)
    out = eng.apply("accounts-1", 1, T0 + 2, b)
    assert applied_tuples(out) == [
        (BTC, ev(OrderAccepted(b))),
        (BTC, ev(trade(1, 100, 1, b, a, 0, 0))),
        (BTC, ev(done(a, DONE_FILLED, DETAIL_NONE, filled=1, filled_quote=1000))),
        (BTC, ev(done(b, DONE_FILLED, DETAIL_NONE, T0 + 2, filled=1, filled_quote=1000))),
    ]
    assert eng.source_seqs == {"accounts-0": 1, "accounts-1": 1}
    assert eng.event_seq == 5
    # gaps are fine: only "not above the last" is a resend
    assert eng.apply("accounts-0", 7, T0 + 3, CancelOrder(1, 1, BTC)) != []
    assert eng.apply("accounts-0", 6, T0 + 3, CancelOrder(1, 1, BTC)) == []
    assert eng.event_seq == 6


def test_engine_event_seq_counts_events_of_every_kind() -> None:
    eng = MatchingEngine("matching-0", [BTC_USDT, ETH_USDT])
    n = 0
    cmds: list[Command] = [
        lim(1, 1, SELL, 100, 2),
        lim(2, 1, SELL, 100, 2, market=ETH),
        lim(3, 2, BUY, 100, 3),  # accepted, trade, done(1), -> rests
        CancelOrder(99, 1, BTC),  # rejected
        CancelAll(1, ""),  # done(2) on ETH
        ExpireOrders(""),  # nothing
        MoveOrder(3, 2, BTC, 99),  # amended
        ReduceOrder(3, 2, BTC, 2),  # filled 2 of 3: reduced to zero, done
    ]
    counts = []
    for i, c in enumerate(cmds, start=1):
        out = eng.apply("s", i, T0 + i, c)
        counts.append(sum(len(a.events) for a in out))
        n += counts[-1]
        assert eng.event_seq == n
    assert counts == [1, 1, 3, 1, 1, 0, 1, 1]


def test_engine_unknown_market_is_rejected() -> None:
    eng = MatchingEngine("matching-0", [BTC_USDT])
    h = eng.state_hash()
    out = eng.apply("s", 1, T0, lim(5, 3, BUY, 100, 1, market="DOGE_USDT"))
    assert applied_tuples(out) == [("DOGE_USDT", ev(rejected(5, 3, REJECT_UNKNOWN_MARKET)))]
    message = out[0].events[0]
    assert isinstance(message, CommandRejected) and "DOGE_USDT" in message.message
    out = eng.apply("s", 2, T0, CancelOrder(5, 3, "NOPE"))
    assert applied_tuples(out) == [("NOPE", ev(rejected(5, 3, REJECT_UNKNOWN_MARKET)))]
    out = eng.apply("s", 3, T0, CancelAll(3, "NOPE"))
    assert applied_tuples(out) == [("NOPE", ev(rejected(0, 3, REJECT_UNKNOWN_MARKET)))]
    assert eng.apply("s", 4, T0, ExpireOrders("NOPE")) == []
    assert eng.event_seq == 3
    assert eng.books[BTC].state_hash() == OrderBook(BTC_USDT).state_hash()
    assert eng.state_hash() != h  # the sequence and counters moved on


def test_engine_time_never_runs_backwards() -> None:
    eng = MatchingEngine("matching-0", [BTC_USDT])
    eng.apply("s", 1, 1000, lim(1, 1, SELL, 100, 1))
    assert eng.last_time == 1000
    # a command stamped earlier runs at 1000: a GTD due at 900 < 1000 arrives expired
    g = lim(2, 2, BUY, 90, 1, GTD, expire_at=900)
    out = eng.apply("s", 2, 800, g)
    assert applied_tuples(out) == [
        (BTC, ev(OrderAccepted(g))),
        (BTC, ev(done(g, DONE_EXPIRED, DETAIL_EXPIRE_TIME, 1000))),
    ]
    assert eng.last_time == 1000
    o = lim(3, 2, BUY, 90, 1)
    eng.apply("s", 3, 5, o)
    assert eng.books[BTC].orders[3].created == 1000
    eng.apply("s", 4, 2000, CancelOrder(3, 2, BTC))
    assert eng.last_time == 2000


def test_engine_shard_wide_expire_and_cancel_all_go_market_by_market() -> None:
    doge = CATALOG.market("DOGE_USDT")
    # configured in an order that is neither sorted nor reverse-sorted: events must come by symbol
    eng = MatchingEngine("matching-0", [ETH_USDT, BTC_USDT, doge])
    g_eth = lim(1, 1, BUY, 100, 1, GTD, market=ETH, expire_at=T0 + 5)
    g_btc = lim(2, 1, BUY, 100, 1, GTD, market=BTC, expire_at=T0 + 5)
    g_doge = lim(6, 1, BUY, 100, 1, GTD, market="DOGE_USDT", expire_at=T0 + 5)
    keep_eth = lim(3, 1, SELL, 200, 1, market=ETH)
    keep_btc = lim(4, 1, SELL, 200, 1, market=BTC)
    keep_doge = lim(7, 1, SELL, 200, 1, market="DOGE_USDT")
    other = lim(5, 2, SELL, 200, 1, market=BTC)
    for i, c in enumerate([g_eth, g_btc, g_doge, keep_eth, keep_btc, keep_doge, other], start=1):
        eng.apply("s", i, T0, c)
    out = eng.apply("s", 10, T0 + 5, ExpireOrders())
    assert applied_tuples(out) == [
        (BTC, ev(done(g_btc, DONE_EXPIRED, DETAIL_EXPIRE_TIME))),
        ("DOGE_USDT", ev(done(g_doge, DONE_EXPIRED, DETAIL_EXPIRE_TIME))),
        (ETH, ev(done(g_eth, DONE_EXPIRED, DETAIL_EXPIRE_TIME))),
    ]
    assert [a.market for a in out] == [BTC, "DOGE_USDT", ETH]
    out = eng.apply("s", 11, T0 + 6, CancelAll(1, ""))
    assert applied_tuples(out) == [
        (BTC, ev(done(keep_btc, DONE_CANCELED, DETAIL_CANCEL_ALL))),
        ("DOGE_USDT", ev(done(keep_doge, DONE_CANCELED, DETAIL_CANCEL_ALL))),
        (ETH, ev(done(keep_eth, DONE_CANCELED, DETAIL_CANCEL_ALL))),
    ]
    assert list(eng.books[BTC].orders) == [5] and len(eng.books[ETH]) == 0
    assert eng.event_seq == 7 + 6


def test_engine_expire_of_one_market_leaves_the_others() -> None:
    eng = MatchingEngine("matching-0", [ETH_USDT, BTC_USDT])
    g_eth = lim(1, 1, BUY, 100, 1, GTD, market=ETH, expire_at=T0 + 5)
    g_btc = lim(2, 1, BUY, 100, 1, GTD, market=BTC, expire_at=T0 + 5)
    eng.apply("s", 1, T0, g_eth)
    eng.apply("s", 2, T0, g_btc)
    out = eng.apply("s", 3, T0 + 9, ExpireOrders(ETH))
    assert applied_tuples(out) == [(ETH, ev(done(g_eth, DONE_EXPIRED, DETAIL_EXPIRE_TIME)))]
    assert list(eng.books[BTC].orders) == [2]


def test_order_copy_keeps_every_field() -> None:
    c = lim(1, 2, SELL, 100, 9, GTD, post_only=True, stp=STP_CANCEL_BOTH, expire_at=T0 + 9, maker_fee_ppm=5)
    d = BookDriver()
    d.placed(c)
    order = d.book.orders[1]
    order.filled, order.filled_quote, order.remaining, order.amount, order.price = 2, 200, 5, 7, 101
    order.budget = 77  # only market buys use it, but a copy must not lose any field
    copy = order.copy()
    assert copy is not order and copy == order and copy.state() == order.state()
    assert (copy.budget, copy.created, copy.cmd) == (77, T0, c)

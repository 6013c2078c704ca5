"""exchange-core's order-book and integration scenarios, re-expressed in this project's units.

exchange-core (OrderBookBaseTest, ITExchangeCoreIntegration) works in abstract price steps and lots; here a
price is in BTC_USDT ticks (0.01 USDT, so 81600 ticks = 816.00 USDT) and an amount in lots (0.00001 BTC),
one tick x one lot = 10 quote units (1e-8 USDT) and one lot = 1000 base units (1e-8 BTC). Orders carry the
market's fee rates (maker 0.1 %, taker 0.2 %).

Each scenario checks the trades (taker, maker, price, lots) and the L2 book like exchange-core does, then
clears the book as exchange-core's @After does (an IOC buy of every ask at a far price, an IOC sell of
every bid at 1 tick) and runs its global balance check on the events alone: every hold a settlement layer
would take is exactly used up, and each asset sums to zero over the users and the fee account.
"""

from __future__ import annotations

from typing import Any

import pytest

from services.matching.book import OrderBook
from services.matching.engine import MatchingEngine
from services.matching.model import (
    BUY,
    DETAIL_FOK_NOT_FILLABLE,
    DETAIL_IOC_REMAINDER,
    DETAIL_NONE,
    DETAIL_USER_CANCEL,
    DONE_CANCELED,
    DONE_FILLED,
    DONE_REJECTED,
    FOK,
    GTC,
    IOC,
    LIMIT,
    MARKET,
    REJECT_NOT_OWNER,
    REJECT_ORDER_NOT_FOUND,
    SELL,
    CancelOrder,
    Command,
    Event,
    MoveOrder,
    OrderDone,
    PlaceOrder,
    ReduceOrder,
    TradeExecuted,
)
from tests.engine.conftest import BTC, BTC_USDT, FEE_ACCOUNT, T0, Settlement, ev, rejected

UID_1 = 412
UID_2 = 413
CLEAR_BUYER = 900
CLEAR_SELLER = 901
MAX_PRICE = 400_000
QPTL = BTC_USDT.quote_units_per_tick_lot  # 10
BPL = BTC_USDT.base_units_per_lot  # 1000
MAKER_PPM = BTC_USDT.maker_fee_ppm  # 1000
TAKER_PPM = BTC_USDT.taker_fee_ppm  # 2000

INITIAL_L2 = (
    [(81593, 40, 1), (81590, 21, 2), (81200, 20, 1), (10000, 13, 2), (9136, 2, 1)],
    [(81599, 75, 2), (81600, 100, 1), (200954, 10, 1), (201000, 60, 2)],
)


def place(
    oid: int,
    uid: int,
    side: int,
    price: int,
    lots: int,
    tif: int = GTC,
    *,
    type: int = LIMIT,
    budget: int = 0,
) -> PlaceOrder:
    return PlaceOrder(
        oid,
        uid,
        BTC,
        side,
        type,
        tif,
        price,
        lots,
        budget,
        maker_fee_ppm=MAKER_PPM,
        taker_fee_ppm=TAKER_PPM,
    )


class Exchange:
    """A one-market shard plus the settlement replay of everything it emits."""

    def __init__(self) -> None:
        self.engine = MatchingEngine("matching-0", [BTC_USDT])
        self.settle = Settlement([BTC_USDT])
        self.seq = 0
        self.now = T0
        self.next_clear_id = 10**9

    def run(self, cmd: Command) -> list[Event]:
        self.seq += 1
        self.now += 1
        applied = self.engine.apply("accounts-0", self.seq, self.now, cmd)
        self.settle.apply_applied(applied)
        return [e for a in applied for e in a.events]

    @property
    def book(self) -> OrderBook:
        return self.engine.books[BTC]

    def l2(self) -> tuple[list[tuple[int, int, int]], list[tuple[int, int, int]]]:
        return self.book.depth(25)

    def clear(self) -> None:
        """exchange-core's @After: match every ask, then every bid; the book must end empty."""
        bids, asks = self.book.depth(10**6)
        ask_sum, bid_sum = sum(a for _, a, _ in asks), sum(b for _, b, _ in bids)
        if ask_sum:
            self.next_clear_id += 1
            self.run(place(self.next_clear_id, CLEAR_BUYER, BUY, MAX_PRICE, ask_sum, IOC))
        if bid_sum:
            self.next_clear_id += 1
            self.run(place(self.next_clear_id, CLEAR_SELLER, SELL, 1, bid_sum, IOC))
        assert self.book.depth(10**6) == ([], []) and len(self.book) == 0
        self.settle.check_closed()


def trades(events: list[Event]) -> list[tuple[int, int, int, int]]:
    """exchange-core's checkEventTrade view: (taker id, maker id, price, lots)."""
    return [
        (e.taker_order_id, e.maker_order_id, e.price, e.amount)
        for e in events
        if isinstance(e, TradeExecuted)
    ]


def dones(events: list[Event]) -> list[tuple[int, int, int, int]]:
    """(order id, reason, detail, remaining) of every OrderDone."""
    return [
        (e.order.order_id, e.reason, e.detail, e.order.remaining) for e in events if isinstance(e, OrderDone)
    ]


def fee(units: int, ppm: int) -> int:
    return -(-units * ppm // 1_000_000)


@pytest.fixture
def x() -> Exchange:
    """OrderBookBaseTest.before(): a place-and-cancel, then 13 orders of UID_1 on both sides."""
    x = Exchange()
    x.run(place(100, UID_2, SELL, 81600, 131))
    x.run(CancelOrder(100, UID_2, BTC))
    for oid, side, price, lots in [
        (1, SELL, 81600, 100),
        (2, SELL, 81599, 50),
        (3, SELL, 81599, 25),
        (4, BUY, 81593, 40),
        (5, BUY, 81590, 20),
        (6, BUY, 81590, 1),
        (7, BUY, 81200, 20),
        (8, SELL, 201000, 28),
        (9, SELL, 201000, 32),
        (10, SELL, 200954, 10),
        (11, BUY, 10000, 12),
        (12, BUY, 10000, 1),
        (13, BUY, 9136, 2),
    ]:
        assert len(x.run(place(oid, UID_1, side, price, lots))) == 1  # accepted, rests
    assert x.l2() == INITIAL_L2
    return x


# --- no matching ------------------------------------------------------------------------------------


def test_add_gtc_orders(x: Exchange) -> None:
    x.run(place(93, UID_1, SELL, 81598, 1))
    x.run(place(94, UID_1, BUY, 81594, 9_000_000_000))
    x.run(place(95, UID_1, SELL, 130000, 13_000_000_000))
    x.run(place(96, UID_1, BUY, 1000, 4))
    bids, asks = INITIAL_L2
    assert x.l2() == (
        [(81594, 9_000_000_000, 1), *bids, (1000, 4, 1)],
        [(81598, 1, 1), *asks[:2], (130000, 13_000_000_000, 1), *asks[2:]],
    )
    x.clear()


def test_cancel_and_reduce_and_rejections(x: Exchange) -> None:
    out = x.run(CancelOrder(5, UID_1, BTC))
    assert dones(out) == [(5, DONE_CANCELED, DETAIL_USER_CANCEL, 20)]
    out = x.run(CancelOrder(2, UID_1, BTC))
    assert dones(out) == [(2, DONE_CANCELED, DETAIL_USER_CANCEL, 50)]
    bids, asks = INITIAL_L2
    assert x.l2() == ([bids[0], (81590, 1, 1), *bids[2:]], [(81599, 25, 1), *asks[1:]])
    # unknown order, other user's order: rejected, nothing changes
    before = x.l2()
    assert [ev(e) for e in x.run(CancelOrder(5291, UID_1, BTC))] == [
        ev(rejected(5291, UID_1, REJECT_ORDER_NOT_FOUND))
    ]
    assert [ev(e) for e in x.run(CancelOrder(3, UID_2, BTC))] == [ev(rejected(3, UID_2, REJECT_NOT_OWNER))]
    assert [ev(e) for e in x.run(MoveOrder(2433, UID_1, BTC, 300))] == [
        ev(rejected(2433, UID_1, REJECT_ORDER_NOT_FOUND))
    ]
    assert x.l2() == before
    # removing the last order of a level removes the level
    x.run(CancelOrder(3, UID_1, BTC))
    assert x.l2()[1] == asks[1:]
    # reduce keeps priority: 8 (28 lots) then 9 (32) at 201000; reduce 8 to 5 and sweep 6 lots
    x.run(ReduceOrder(8, UID_1, BTC, 5))
    out = x.run(place(200, UID_2, BUY, 201000, 100 + 10 + 6, IOC))
    assert trades(out) == [
        (200, 1, 81600, 100),
        (200, 10, 200954, 10),
        (200, 8, 201000, 5),
        (200, 9, 201000, 1),
    ]
    assert x.l2()[1] == [(201000, 31, 1)]
    x.clear()


def test_move_to_an_existing_level_loses_priority(x: Exchange) -> None:
    x.run(MoveOrder(7, UID_1, BTC, 81590))
    bids, _ = INITIAL_L2
    assert x.l2()[0] == [bids[0], (81590, 41, 3), *bids[3:]]
    assert [o.order_id for o in x.book.iter_orders(BUY)][:4] == [4, 5, 6, 7]
    out = x.run(place(201, UID_2, SELL, 81590, 61, IOC))
    assert trades(out) == [(201, 4, 81593, 40), (201, 5, 81590, 20), (201, 6, 81590, 1)]
    assert x.l2()[0][0] == (81590, 20, 1)  # the moved order 7 is what is left
    x.clear()


def test_move_to_a_new_level(x: Exchange) -> None:
    out = x.run(MoveOrder(7, UID_1, BTC, 81594))
    assert trades(out) == []
    bids, asks = INITIAL_L2
    assert x.l2() == ([(81594, 20, 1), bids[0], bids[1], *bids[3:]], asks)
    x.clear()


# --- matching ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("lots", "expected_trades", "expected_bids"),
    [
        (10, [(123, 4, 81593, 10)], [(81593, 30, 1), *INITIAL_L2[0][1:]]),  # partial BBO
        (40, [(123, 4, 81593, 40)], INITIAL_L2[0][1:]),  # full BBO
        (41, [(123, 4, 81593, 40), (123, 5, 81590, 1)], [(81590, 20, 2), *INITIAL_L2[0][2:]]),  # two orders
    ],
)
def test_ioc_sell_against_the_bids(
    x: Exchange, lots: int, expected_trades: list[tuple[int, int, int, int]], expected_bids: list[Any]
) -> None:
    out = x.run(place(123, UID_2, SELL, 1, lots, IOC))
    assert trades(out) == expected_trades
    assert dones(out)[-1] == (123, DONE_FILLED, DETAIL_NONE, 0)
    assert x.l2() == (expected_bids, INITIAL_L2[1])
    assert 4 in x.book.orders if lots < 40 else 4 not in x.book.orders
    x.clear()


def test_ioc_buy_sweeps_all_asks_and_cancels_the_rest_with_exact_balances(x: Exchange) -> None:
    out = x.run(place(123, UID_2, BUY, MAX_PRICE, 270, IOC))
    assert trades(out) == [
        (123, 2, 81599, 50),
        (123, 3, 81599, 25),
        (123, 1, 81600, 100),
        (123, 10, 200954, 10),
        (123, 8, 201000, 28),
        (123, 9, 201000, 32),
    ]
    assert dones(out) == [
        (2, DONE_FILLED, DETAIL_NONE, 0),
        (3, DONE_FILLED, DETAIL_NONE, 0),
        (1, DONE_FILLED, DETAIL_NONE, 0),
        (10, DONE_FILLED, DETAIL_NONE, 0),
        (8, DONE_FILLED, DETAIL_NONE, 0),
        (9, DONE_FILLED, DETAIL_NONE, 0),
        (123, DONE_CANCELED, DETAIL_IOC_REMAINDER, 25),  # exchange-core's "rejection" of 25
    ]
    assert x.l2() == (INITIAL_L2[0], [])
    # balances from the events: UID_2 paid the makers' prices for 245 lots
    quotes = [
        50 * 81599 * 10,
        25 * 81599 * 10,
        100 * 81600 * 10,
        10 * 200954 * 10,
        28 * 201000 * 10,
        32 * 201000 * 10,
    ]
    maker_fees = [fee(q, 1000) for q in quotes]
    assert maker_fees == [40800, 20400, 81600, 20096, 56280, 64320]  # 40799.5, 20399.75, ... rounded up
    paid = sum(quotes)
    assert paid == 283_494_650  # 2.8349465 USDT
    assert x.settle.user_deltas() == {
        FEE_ACCOUNT: {"BTC": 2 * 245, "USDT": 283_496},
        UID_1: {"BTC": -245 * 1000, "USDT": paid - 283_496},
        UID_2: {"BTC": 245 * 1000 - 490, "USDT": -paid},
    }
    x.clear()


def test_marketable_gtc_orders(x: Exchange) -> None:
    out = x.run(place(123, UID_2, BUY, 81599, 1))
    assert trades(out) == [(123, 2, 81599, 1)]
    assert x.l2()[1][0] == (81599, 74, 2)
    out = x.run(place(124, UID_2, BUY, 81599, 76))  # 74 left at 81599: the remaining 2 rest
    assert trades(out) == [(124, 2, 81599, 49), (124, 3, 81599, 25)]
    assert x.l2() == ([(81599, 2, 1), *INITIAL_L2[0]], INITIAL_L2[1][1:])
    x.clear()


def test_marketable_gtc_order_takes_all_liquidity_and_rests(x: Exchange) -> None:
    out = x.run(place(123, UID_2, BUY, 220000, 1000))
    assert trades(out) == [
        (123, 2, 81599, 50),
        (123, 3, 81599, 25),
        (123, 1, 81600, 100),
        (123, 10, 200954, 10),
        (123, 8, 201000, 28),
        (123, 9, 201000, 32),
    ]
    assert 123 not in [d[0] for d in dones(out)]  # a limit order is not "rejected": it rests
    assert x.l2() == ([(220000, 755, 1), *INITIAL_L2[0]], [])
    x.clear()


def test_moves_into_the_marketable_zone(x: Exchange) -> None:
    x.run(place(83, UID_2, BUY, 81200, 20))
    assert x.l2()[0][2] == (81200, 40, 2)
    out = x.run(MoveOrder(83, UID_2, BTC, 81602))
    assert trades(out) == [(83, 2, 81599, 20)]
    assert x.l2() == (INITIAL_L2[0], [(81599, 55, 2), *INITIAL_L2[1][1:]])

    x.run(place(84, UID_2, BUY, 81594, 100))
    out = x.run(MoveOrder(84, UID_2, BTC, 81600))
    assert trades(out) == [(84, 2, 81599, 30), (84, 3, 81599, 25), (84, 1, 81600, 45)]
    assert x.l2() == (INITIAL_L2[0], [(81600, 55, 1), *INITIAL_L2[1][2:]])

    x.run(place(85, UID_2, BUY, 81594, 126))
    out = x.run(MoveOrder(85, UID_2, BTC, 201000))
    assert trades(out) == [(85, 1, 81600, 55), (85, 10, 200954, 10), (85, 8, 201000, 28), (85, 9, 201000, 32)]
    assert x.l2() == ([(201000, 1, 1), *INITIAL_L2[0]], [])
    x.clear()


def test_fok_limit_all_or_nothing_across_levels(x: Exchange) -> None:
    before = (x.l2(), x.book.state_hash())
    out = x.run(place(300, UID_2, BUY, 81600, 176, FOK))  # 175 lots up to 81600
    assert trades(out) == [] and dones(out) == [(300, DONE_REJECTED, DETAIL_FOK_NOT_FILLABLE, 176)]
    assert (x.l2(), x.book.state_hash()) == before
    out = x.run(place(301, UID_2, BUY, 81600, 175, FOK))
    assert trades(out) == [(301, 2, 81599, 50), (301, 3, 81599, 25), (301, 1, 81600, 100)]
    assert dones(out)[-1] == (301, DONE_FILLED, DETAIL_NONE, 0)
    assert x.l2()[1] == INITIAL_L2[1][2:]
    x.clear()


def test_market_buy_by_budget_sweeps_levels(x: Exchange) -> None:
    """exchange-core's FOK_BUDGET buy re-expressed as this project's market buy: a quote budget; at
    each level it buys budget // (price x 10) lots and returns what cannot buy a lot at the next ask."""
    budget = 75 * 81599 * 10 + 100 * 81600 * 10 + 3 * 200954 * 10 + 1_234_567
    out = x.run(place(400, UID_2, BUY, 0, 0, IOC, type=MARKET, budget=budget))
    # 1_234_567 left after 3 lots at 200954 buys floor(1_234_567 / 2_009_540) = 0 more
    assert trades(out) == [
        (400, 2, 81599, 50),
        (400, 3, 81599, 25),
        (400, 1, 81600, 100),
        (400, 10, 200954, 3),
    ]
    last = [e for e in out if isinstance(e, TradeExecuted)][-1]
    assert last.taker_remaining_budget == 1_234_567 and last.taker_price == 0
    [done] = [e for e in out if isinstance(e, OrderDone) and e.order.order_id == 400]
    assert (done.reason, done.order.budget, done.order.filled, done.order.filled_quote) == (
        DONE_FILLED,
        1_234_567,
        178,
        budget - 1_234_567,
    )
    assert x.l2()[1] == [(200954, 7, 1), (201000, 60, 2)]
    # a budget that outlasts the book: everything bought, the rest returned
    out = x.run(place(401, UID_2, BUY, 0, 0, IOC, type=MARKET, budget=10**12))
    spent = 7 * 200954 * 10 + 60 * 201000 * 10
    [done] = [e for e in out if isinstance(e, OrderDone) and e.order.order_id == 401]
    assert (done.reason, done.detail, done.order.budget) == (
        DONE_CANCELED,
        DETAIL_IOC_REMAINDER,
        10**12 - spent,
    )
    x.clear()


def test_basic_full_cycle_with_balances() -> None:
    """ITExchangeCoreIntegration.basicFullCycleTest."""
    x = Exchange()
    x.run(place(101, UID_1, SELL, 1600, 7))
    x.run(place(102, UID_1, BUY, 1550, 4))
    assert x.l2() == ([(1550, 4, 1)], [(1600, 7, 1)])
    # 2. UID_2's IOC buy partly takes 101
    out = x.run(place(201, UID_2, BUY, 1700, 2, IOC))
    assert trades(out) == [(201, 101, 1600, 2)]
    assert dones(out) == [(201, DONE_FILLED, DETAIL_NONE, 0)]
    assert x.l2() == ([(1550, 4, 1)], [(1600, 5, 1)])
    # 3. UID_2 places a limit buy
    x.run(place(202, UID_2, BUY, 1583, 4))
    assert x.l2() == ([(1583, 4, 1), (1550, 4, 1)], [(1600, 5, 1)])
    # 4. UID_1 moves 101 down: it trades 4 with 202 at 202's price and rests its last lot at 1580
    out = x.run(MoveOrder(101, UID_1, BTC, 1580))
    assert trades(out) == [(101, 202, 1583, 4)]
    assert dones(out) == [(202, DONE_FILLED, DETAIL_NONE, 0)]
    assert x.l2() == ([(1550, 4, 1)], [(1580, 1, 1)])
    # balances: trade 1 (UID_2 takes, buys 2 lots at 1600), trade 2 (UID_1 takes, sells 4 at 1583)
    q1, q2 = 2 * 1600 * QPTL, 4 * 1583 * QPTL  # 32000, 63320 quote units
    uid1_fees = fee(q1, MAKER_PPM) + fee(q2, TAKER_PPM)  # 32 + 127 (126.64 rounded up), in USDT
    uid2_fees = fee(2 * BPL, TAKER_PPM) + fee(4 * BPL, MAKER_PPM)  # 4 + 4, in BTC
    assert (uid1_fees, uid2_fees) == (159, 8)
    assert x.settle.user_deltas() == {
        FEE_ACCOUNT: {"BTC": 8, "USDT": 159},
        UID_1: {"BTC": -6000, "USDT": 95320 - 159},
        UID_2: {"BTC": 6000 - 8, "USDT": -95320},
    }
    assert x.settle.totals() == {"BTC": 0, "USDT": 0}
    x.clear()

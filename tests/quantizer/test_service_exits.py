"""The strategies' own triggers and exits in the hosted service (real processes, scripted counter-orders):
grid trigger price, stop-loss and take-profit (cancel, sell the base under the slippage cap, funds
returned), trailing up; DCA stop-loss, cooldown between deals and max deals.

Each test starts from the last price 30000 with user 2 (MAKER) offering at 30000 (the grids' and deals'
market buys) and user 3 (TAKER) taking what the script says. GRID's levels: 29000 .. 31000 by 500; it
starts at 30000 with buys at 29000, 29500 and sells at 30500, 31000."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from exchange.v1 import accounts_service_pb2 as apb
from exchange.v1 import quantizer_service_pb2 as qpb

from testkit.cluster import assert_invariants
from tests.quantizer.live import BUY, GRID, MAKER, MARKET, SELL, TAKER, Live, new_cluster, wait_for

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    cluster = new_cluster(Path(tmp_path_factory.mktemp("exits")) / "exchange", timer_interval_ms=100)
    try:
        cluster.start()
        lv = Live(cluster)
        lv.deposit(MAKER, "BTC", "10")
        lv.deposit(MAKER, "USDT", "1000000")
        lv.deposit(TAKER, "USDT", "1000000")
        lv.deposit(TAKER, "BTC", "10")
        yield lv
    finally:
        cluster.stop()


def fresh_market(lv: Live) -> None:
    """No resting order of MAKER or TAKER; MAKER offers 1 BTC at 30000 and the last price is 30000."""
    for user in (MAKER, TAKER):
        lv.accounts.CancelAllOrders(apb.CancelAllOrdersRequest(user_id=user, market=MARKET), timeout=10)
    lv.order(MAKER, SELL, "30000", "1")
    lv.order(TAKER, BUY, "30000", "0.001", ioc=True)
    lv.cluster.wait_quiet()


def cancel_maker(lv: Live) -> None:
    lv.accounts.CancelAllOrders(apb.CancelAllOrdersRequest(user_id=MAKER, market=MARKET), timeout=10)
    lv.cluster.wait_quiet()


def grid(**changes: object) -> qpb.GridConfig:
    g = qpb.GridConfig()
    g.CopyFrom(GRID)
    for k, v in changes.items():
        setattr(g, k, v)
    return g


def resting(lv: Live, trading_user: int) -> list[tuple[int, int]]:
    """(side, price ticks) of the strategy's open orders, sorted."""
    return sorted((int(o.side), lv.spec.parse_price(o.price)) for o in lv.open_orders(trading_user))


def total_remaining(lv: Live, trading_user: int, side: int) -> str:
    spec = lv.spec
    lots = sum(
        spec.parse_amount(o.remaining_amount) for o in lv.open_orders(trading_user) if int(o.side) == side
    )
    return spec.format_amount(lots)


def holdings(lv: Live, user: int) -> tuple[int, int]:
    b = lv.balances(user)
    return sum(b.get("BTC", (0, 0))), sum(b.get("USDT", (0, 0)))


def returned(lv: Live, sid: int) -> qpb.Strategy:
    s: qpb.Strategy = wait_for("funds returned", lambda: (x := lv.strategy(sid)).funds_returned and x)
    assert s.state == qpb.STRATEGY_STATE_STOPPED
    assert not lv.open_orders(s.trading_user_id)
    assert holdings(lv, s.trading_user_id) == (0, 0)
    return s


def started_with_every_order_then_stopped(live: Live, sid: int, sub: int) -> None:
    """The grid started after its first fill (the initial purchase) with both buys and both sells of
    GRID resting; then a cancel-orders stop returns everything."""
    s = live.settled(sid, fills=1)
    assert s.state == qpb.STRATEGY_STATE_RUNNING
    assert resting(live, sub) == [(BUY, 2_900_000), (BUY, 2_950_000), (SELL, 3_050_000), (SELL, 3_100_000)]
    live.quantizer.StopStrategy(
        qpb.StopStrategyRequest(strategy_id=sid, mode=qpb.STOP_MODE_CANCEL_ORDERS), timeout=10
    )
    returned(live, sid)
    assert_invariants(live.cluster.wait_quiet())


def test_grid_waits_for_its_trigger_price(live: Live) -> None:
    user = 21
    fresh_market(live)
    live.deposit(user, "USDT", "2000")
    s = live.create(grid(trigger_price="30200"), "trigger", user)
    sid, sub = s.strategy_id, s.trading_user_id
    wait_for("waiting", lambda: live.strategy(sid).state == qpb.STRATEGY_STATE_WAITING_TRIGGER)
    # trades below the trigger start nothing
    live.order(TAKER, BUY, "30000", "0.001", ioc=True)
    live.cluster.wait_quiet()
    time.sleep(0.5)
    s = live.strategy(sid)
    assert s.state == qpb.STRATEGY_STATE_WAITING_TRIGGER
    assert s.report.fills == 0 and s.report.open_orders == 0 and not live.open_orders(sub)
    # the price trades at the trigger: the grid starts there (its initial purchase from MAKER's offer)
    cancel_maker(live)
    live.order(MAKER, SELL, "30200", "1")
    live.order(TAKER, BUY, "30200", "0.001", ioc=True)
    started_with_every_order_then_stopped(live, sid, sub)


def test_a_grid_triggered_by_a_trade_at_the_bid_still_buys_the_base_for_every_sell(live: Live) -> None:
    user = 27
    fresh_market(live)  # MAKER offers 0.999 BTC at 30000
    live.order(MAKER, BUY, "29800", "0.5")
    live.deposit(user, "USDT", "2000")
    s = live.create(grid(trigger_price="29800"), "trigger-bid", user)
    sid, sub = s.strategy_id, s.trading_user_id
    wait_for("waiting", lambda: live.strategy(sid).state == qpb.STRATEGY_STATE_WAITING_TRIGGER)
    # TAKER sells into MAKER's bid: the last price is the trigger, 200 below the ask the grid buys from.
    # The initial purchase buys the base by amount (budgeted at 29800 it bought too little and the
    # sell at 31000 was skipped)
    live.order(TAKER, SELL, "29800", "0.001", ioc=True)
    started_with_every_order_then_stopped(live, sid, sub)


def test_grid_stop_loss_cancels_sells_the_base_and_returns_funds(live: Live) -> None:
    user = 22
    fresh_market(live)
    live.deposit(user, "USDT", "2000")
    s = live.create(grid(stop_loss_price="28800", sell_on_stop=True), "sl", user)
    sid, sub = s.strategy_id, s.trading_user_id
    live.settled(sid, fills=1)
    cancel_maker(live)
    live.order(MAKER, BUY, "28800", "0.5")  # where the stop's market sell lands (within the 5 % cap)
    live.cluster.wait_quiet()
    before = live.balances(user)
    # TAKER sells through both grid buys down to 28800: the stop-loss price trades
    amount = live.spec.parse_amount(total_remaining(live, sub, BUY)) + live.spec.parse_amount("0.001")
    live.order(TAKER, SELL, "28800", live.spec.format_amount(amount), ioc=True)
    s = returned(live, sid)
    assert s.stop_reason == "stop_loss"
    # the base was sold at 28800: what is left is less than one minimum order
    spec = live.spec
    assert (
        spec.base.parse(s.report.base_held, allow_zero=True) < spec.min_amount_lots * spec.base_units_per_lot
    )
    assert s.report.last_price == "28800"
    after = live.balances(user)
    assert after["USDT"][0] > before["USDT"][0]  # the quote (including the sale) came back to the owner
    assert_invariants(live.cluster.wait_quiet())


def test_grid_take_profit_stops_and_returns_funds(live: Live) -> None:
    user = 23
    fresh_market(live)
    live.deposit(user, "USDT", "2000")
    s = live.create(grid(take_profit_price="31200", sell_on_stop=True), "tp", user)
    sid, sub = s.strategy_id, s.trading_user_id
    live.settled(sid, fills=1)
    cancel_maker(live)
    live.order(MAKER, SELL, "31200", "0.001")
    live.cluster.wait_quiet()
    amount = live.spec.parse_amount(total_remaining(live, sub, SELL)) + live.spec.parse_amount("0.001")
    live.order(TAKER, BUY, "31200", live.spec.format_amount(amount), ioc=True)  # both sells, then 31200
    s = returned(live, sid)
    assert s.stop_reason == "take_profit"
    assert s.report.last_price == "31200"
    assert s.report.matched_pairs == 2 and s.report.fills >= 3
    assert_invariants(live.cluster.wait_quiet())


def test_grid_trailing_up_follows_the_price(live: Live) -> None:
    user = 24
    fresh_market(live)
    live.deposit(user, "USDT", "2000")
    s = live.create(grid(trailing_up=True), "trail", user)
    sid, sub = s.strategy_id, s.trading_user_id
    live.settled(sid, fills=1)
    cancel_maker(live)
    # every sell fills: the grid now holds four buys (29000 .. 30500)
    live.order(TAKER, BUY, "31000", total_remaining(live, sub, SELL), ioc=True)
    live.settled(sid, fills=3)
    assert resting(live, sub) == [(BUY, 2_900_000), (BUY, 2_950_000), (BUY, 3_000_000), (BUY, 3_050_000)]
    # the price reaches the level above the top (31500): the lowest buy moves to the old top 31000
    live.order(MAKER, SELL, "31500", "0.001")
    live.order(TAKER, BUY, "31500", "0.001", ioc=True)

    def shifted() -> bool:
        return resting(live, sub) == [
            (BUY, 2_950_000),
            (BUY, 3_000_000),
            (BUY, 3_050_000),
            (BUY, 3_100_000),
        ]

    wait_for("the range moved up one level", shifted)
    assert live.strategy(sid).state == qpb.STRATEGY_STATE_RUNNING
    live.quantizer.StopStrategy(
        qpb.StopStrategyRequest(strategy_id=sid, mode=qpb.STOP_MODE_CANCEL_ORDERS), timeout=10
    )
    returned(live, sid)
    assert_invariants(live.cluster.wait_quiet())


def dca(**changes: object) -> qpb.DcaConfig:
    d = qpb.DcaConfig(
        base_order_quote="100",
        safety_order_quote="100",
        max_safety_orders=1,
        max_active_safety_orders=1,
        price_deviation="0.01",
        take_profit="0.01",
        investment="500",
    )
    for k, v in changes.items():
        setattr(d, k, v)
    return d


def create_dca(lv: Live, user: int, client_id: str, config: qpb.DcaConfig) -> qpb.Strategy:
    s: qpb.Strategy = lv.create_request(
        qpb.CreateStrategyRequest(user_id=user, market=MARKET, dca=config, client_strategy_id=client_id)
    ).strategy
    return s


def labelled(lv: Live, sub: int) -> dict[str, apb.Order]:
    return {o.client_order_id.rsplit("-", 1)[-1]: o for o in lv.open_orders(sub)}


def test_dca_stop_loss_closes_the_deal_and_max_deals_stops(live: Live) -> None:
    user = 25
    fresh_market(live)
    live.deposit(user, "USDT", "1000")
    s = create_dca(live, user, "dca-sl", dca(stop_loss="0.05", max_deals=1))
    sid, sub = s.strategy_id, s.trading_user_id
    live.settled(sid, fills=1, open_orders=2)  # base order filled; safety 1 and take profit rest
    orders = labelled(live, sub)
    assert orders["d1s1"].price == "29700"
    cancel_maker(live)
    live.order(MAKER, BUY, "28500", "0.5")  # the stop's market sell lands here
    live.cluster.wait_quiet()
    # TAKER sells through the safety order down to 28500 = 30000 * (1 - 5 %): the stop-loss
    amount = live.spec.parse_amount(orders["d1s1"].remaining_amount) + live.spec.parse_amount("0.001")
    live.order(TAKER, SELL, "28500", live.spec.format_amount(amount), ioc=True)
    s = returned(live, sid)  # max_deals = 1: the strategy stops after its only deal
    assert s.stop_reason == "max_deals"  # its only deal was closed by the stop-loss
    spec = live.spec
    assert (
        spec.base.parse(s.report.base_held, allow_zero=True) < spec.min_amount_lots * spec.base_units_per_lot
    )
    assert s.report.fills >= 3  # base order, safety order, the stop's sale
    assert s.report.realized_profit.startswith("-")  # a loss, booked
    assert_invariants(live.cluster.wait_quiet())


def test_dca_cooldown_between_deals_and_max_deals(live: Live) -> None:
    user = 26
    cooldown = 3
    fresh_market(live)
    live.deposit(user, "USDT", "1000")
    s = create_dca(live, user, "dca-cd", dca(cooldown_seconds=cooldown, max_deals=2))
    sid, sub = s.strategy_id, s.trading_user_id
    live.settled(sid, fills=1, open_orders=2)
    cancel_maker(live)
    # deal 1's take profit fills: the deal closes, nothing is placed during the cooldown
    tp = labelled(live, sub)["d1t"]
    live.order(TAKER, BUY, tp.price, tp.remaining_amount, ioc=True)
    live.settled(sid, fills=2, open_orders=0)
    closed = time.monotonic()
    live.order(MAKER, SELL, "30000", "1")  # liquidity for deal 2's market buy
    live.cluster.wait_quiet()
    time.sleep(max(0.0, closed + cooldown / 2 - time.monotonic()))
    s = live.strategy(sid)
    assert s.report.fills == 2 and not live.open_orders(sub), "a deal started during the cooldown"
    # deal 2 starts after the cooldown
    live.settled(sid, fills=3, open_orders=2)
    assert time.monotonic() - closed >= cooldown - 1.0
    orders = labelled(live, sub)
    assert set(orders) == {"d2s1", "d2t"}
    cancel_maker(live)
    tp = orders["d2t"]
    live.order(TAKER, BUY, tp.price, tp.remaining_amount, ioc=True)
    s = returned(live, sid)  # max deals reached: stopped, funds back, no third deal
    assert s.stop_reason == "max_deals"
    assert s.report.fills == 4
    assert s.report.matched_pairs == 2
    assert not s.report.realized_profit.startswith("-")
    assert_invariants(live.cluster.wait_quiet())

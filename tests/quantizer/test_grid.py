"""Grid: levels, preview, refusals, and the state machine on scripted events (hand-computed values).

The reference grid: 90..110 USD, 4 intervals (levels 90, 95, 100, 105, 110), 1000 USD invested, start
at 100 (tests/quantizer/util.py for the market: lot = 10_000 base units, notional = price x lots cents).
"""

from __future__ import annotations

from dataclasses import replace
from fractions import Fraction

import pytest

from services.common.errors import InvalidArgument, Reason
from services.common.markets import Asset, MarketSpec, fee
from services.matching.model import BUY, DONE_CANCELED, DONE_FILLED, SELL
from services.quantizer.core import STOP_CANCEL_AND_SELL, Done, Stop, Tick
from services.quantizer.grid import (
    ARITHMETIC,
    GEOMETRIC,
    MAX_GRID_INTERVALS,
    GridParams,
    GridStrategy,
    grid_levels,
    grid_profit,
    level_price,
    plan_grid,
    preview_fields,
    validate_grid,
)
from services.quantizer.params import grid_params
from tests.quantizer.util import LOT, SPEC, Exchange, cancels, places, roundtrip, state

REF = GridParams(lower=90, upper=110, intervals=4, invest_quote=100_000)


# --- levels ------------------------------------------------------------------------------------


def test_arithmetic_levels_round_to_the_nearest_tick_halves_up() -> None:
    assert grid_levels(100, 110, 3, ARITHMETIC) == [100, 103, 107, 110]  # 103.33, 106.67
    assert grid_levels(100, 106, 4, ARITHMETIC) == [100, 102, 103, 105, 106]  # 101.5 -> 102, 104.5 -> 105
    assert grid_levels(90, 110, 4, ARITHMETIC) == [90, 95, 100, 105, 110]


def test_geometric_levels_are_exact_when_the_ratio_is_rational() -> None:
    assert grid_levels(100, 400, 2, GEOMETRIC) == [100, 200, 400]
    assert grid_levels(1000, 8000, 3, GEOMETRIC) == [1000, 2000, 4000, 8000]


def test_geometric_levels_round_irrational_prices_to_the_nearest_tick() -> None:
    # 100 * 2^(i/4) = 100, 118.92, 141.42, 168.18, 200
    assert grid_levels(100, 200, 4, GEOMETRIC) == [100, 119, 141, 168, 200]
    # 1000 * 1.5^(i/2): 1224.74 -> 1225
    assert grid_levels(1000, 1500, 2, GEOMETRIC) == [1000, 1225, 1500]


def test_geometric_levels_extend_above_the_top_for_trailing() -> None:
    # ratio 2 per level: level 3 of 100..400 in 2 intervals is 800, level 5 is 3200
    assert level_price(100, 400, 2, GEOMETRIC, 3) == 800
    assert level_price(100, 400, 2, GEOMETRIC, 5) == 3200
    assert level_price(100, 200, 4, GEOMETRIC, 5) == 238  # 100 * 2^(5/4) = 237.84
    assert level_price(90, 110, 4, ARITHMETIC, 6) == 120


# --- preview -----------------------------------------------------------------------------------


def test_preview_of_the_reference_grid() -> None:
    plan = plan_grid(SPEC, REF, 100)
    assert plan.levels == (90, 95, 100, 105, 110)
    assert plan.empty == 2
    assert plan.buy_levels == (1, 0) and plan.sell_levels == (3, 4)
    # 258 lots: buys 258 x (95 + 90) = 47730 cents; the two sells need 2 x 258 lots net of the 0.2 %
    # taker fee: 518 lots (517 would give 5_159_660 < 5_160_000 units) for 518 x 100 = 51800 cents;
    # reserve = one lot at 110 = 110 cents: 99640 <= 100000, while 259 lots would need 100025.
    assert plan.lots == 258
    assert (plan.buy_quote, plan.base_lots, plan.base_budget, plan.reserve) == (47730, 518, 51800, 110)
    assert plan.quote_needed == 99640
    # Profit per grid: buy 258 lots, sell the 2_577_420 units received (net of 0.1 %) one level up,
    # 0.1 % fee on the proceeds: 90->95: 24485 - 25 - 23220 = 1240 ... 105->110: 28351 - 29 - 27090 = 1232
    assert [grid_profit(SPEC, a, b, 258) for a, b in [(90, 95), (95, 100), (100, 105), (105, 110)]] == [
        1240,
        1238,
        1234,
        1232,
    ]
    assert (plan.profit_min, plan.profit_max) == (1232, 1240)
    assert plan.rate_min == Fraction(1232, 27090) and plan.rate_max == Fraction(1240, 23220)
    # Minimum: 12 lots (12 x 90 = 1080 cents >= 10 USD; the counter sell of 12 lots net of fee is 11 lots
    # at 95 = 1045 cents); 12 x 185 + 25 lots x 100 + 110 = 4830 cents
    assert plan.min_lots == 12 and plan.min_investment == 4830
    fields = preview_fields(SPEC, plan)
    assert fields["levels"] == ["90", "95", "100", "105", "110"]
    assert fields["amount_per_level"] == "2.58"
    assert fields["min_investment"] == "48.3"
    assert (fields["profit_per_grid_min"], fields["profit_per_grid_max"]) == ("12.32", "12.4")
    assert (fields["profit_rate_min"], fields["profit_rate_max"]) == ("0.045478", "0.053402")


def test_minimum_investment_is_exactly_the_boundary() -> None:
    assert plan_grid(SPEC, replace(REF, invest_quote=4830), 100).lots == 12
    with pytest.raises(InvalidArgument) as err:
        plan_grid(SPEC, replace(REF, invest_quote=4829), 100)
    assert err.value.reason == Reason.BELOW_MIN_NOTIONAL
    assert "48.29 USD is below this grid's minimum 48.3 USD" in err.value.message


def test_minimum_investment_names_the_minimum_amount_when_it_binds() -> None:
    spec = MarketSpec.create(
        "BTC_USD",
        Asset("BTC", 6),
        Asset("USD", 2),
        price_tick="1",
        lot_size="0.01",
        min_amount="0.5",
        min_notional="10",
        maker_fee_rate="0.001",
        taker_fee_rate="0.002",
    )
    plan = plan_grid(spec, REF, 100)
    # 50 lots at least, but a counter sell of a 50-lot buy nets 49.95 lots -> 49, below the minimum;
    # 51 lots net 50.949 -> 50 lots: the minimum is 51 and the minimum amount is what binds
    assert plan.min_lots == 51
    with pytest.raises(InvalidArgument) as err:
        plan_grid(spec, replace(REF, invest_quote=plan.min_investment - 1), 100)
    assert err.value.reason == Reason.BELOW_MIN_AMOUNT


def test_quote_and_base_investment_buys_only_the_missing_base() -> None:
    # 3 BTC (300 lots) invested besides the quote: the sells need 2 x lots, only the rest is bought
    p = replace(REF, invest_base=3 * LOT * 100)  # 300 lots
    plan = plan_grid(SPEC, p, 100)
    need = 2 * plan.lots * LOT - 300 * LOT
    bought = plan.base_lots * LOT
    assert bought - fee(bought, SPEC.taker_fee_ppm) >= need
    less = (plan.base_lots - 1) * LOT
    assert less - fee(less, SPEC.taker_fee_ppm) < need  # not one lot more than needed
    assert plan.lots > 258  # the invested base lets the same quote buy more per level


# --- refusals ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "reason", "text"),
    [
        ({"upper": 90}, Reason.INVALID_FIELD, "upper price 90 USD must be above lower price 90 USD"),
        ({"upper": 80}, Reason.INVALID_FIELD, "must be above lower price"),
        ({"intervals": 0}, Reason.VALUE_OUT_OF_RANGE, "intervals must be at least 1"),
        ({"intervals": MAX_GRID_INTERVALS + 1}, Reason.VALUE_OUT_OF_RANGE, "at most 500"),
        ({"lower": 100, "upper": 102}, Reason.PRICE_NOT_ON_TICK, "finer than the price tick 1 USD"),
        # 1000 -> 1002 is 0.2 %: exactly twice the fee does not beat it (1002 x 0.999^2 < 1000)
        (
            {"lower": 1000, "upper": 1010, "intervals": 5},
            Reason.INVALID_FIELD,
            "does not beat twice the maker fee",
        ),
        ({"stop_loss": 120, "take_profit": 115}, Reason.INVALID_FIELD, "must be below take-profit"),
        ({"trailing_limit": 150}, Reason.INVALID_FIELD, "trailing_limit needs trailing_up"),
        ({"trailing_up": True, "trailing_limit": 110}, Reason.INVALID_FIELD, "must be above the upper price"),
        ({"spacing": 3}, Reason.INVALID_FIELD, "arithmetic or geometric"),
        ({"invest_quote": -1}, Reason.VALUE_OUT_OF_RANGE, "invest_quote"),
    ],
)
def test_invalid_grids_are_refused_with_their_reason(
    change: dict[str, object], reason: Reason, text: str
) -> None:
    p = replace(REF, **change)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument) as err:
        GridStrategy(SPEC, 1, p)
    assert err.value.reason == reason
    assert text in err.value.message


def test_a_step_just_above_twice_the_fee_is_accepted() -> None:
    assert validate_grid(SPEC, GridParams(lower=1000, upper=1015, intervals=5, invest_quote=10**9))[1] == 1003


@pytest.mark.parametrize(
    ("change", "text"),
    [
        ({"stop_loss": 100}, "stop-loss price 100 USD must be below the start price 100 USD"),
        ({"take_profit": 99}, "take-profit price 99 USD must be above the start price 100 USD"),
    ],
)
def test_stops_on_the_wrong_side_of_the_price_are_refused(change: dict[str, object], text: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        plan_grid(SPEC, replace(REF, **change), 100)  # type: ignore[arg-type]
    assert text in err.value.message


def test_edge_parameters_are_parsed_and_refused_precisely() -> None:
    fields = {"lower_price": "90", "upper_price": "110", "intervals": 4, "investment": "1000"}
    assert grid_params(SPEC, fields) == replace(REF, buy_slippage_ppm=10_000)  # the API's default 1 %
    assert grid_params(SPEC, {**fields, "initial_buy_slippage": "0"}) == REF
    assert grid_params(SPEC, {**fields, "initial_buy_slippage": "0.025"}).buy_slippage_ppm == 25_000
    with pytest.raises(InvalidArgument) as err:
        grid_params(SPEC, {**fields, "initial_buy_slippage": "1"})
    assert err.value.reason == Reason.VALUE_OUT_OF_RANGE
    half = MarketSpec.create("BTC_USD", Asset("BTC", 6), Asset("USD", 2), price_tick="0.5", lot_size="0.02")
    assert grid_params(half, {**fields, "lower_price": "90.5"}).lower == 181
    with pytest.raises(InvalidArgument) as err:
        grid_params(half, {**fields, "lower_price": "90.3"})
    assert err.value.reason == Reason.PRICE_NOT_ON_TICK
    with pytest.raises(InvalidArgument) as err:
        grid_params(SPEC, {**fields, "lower_price": "90.5"})  # finer than the market's decimals
    assert err.value.reason == Reason.INVALID_DECIMAL
    with pytest.raises(InvalidArgument) as err:
        grid_params(SPEC, {**fields, "investment": "1e3"})
    assert err.value.reason == Reason.INVALID_DECIMAL
    with pytest.raises(InvalidArgument) as err:
        grid_params(SPEC, {**fields, "spacing": "log"})
    assert err.value.reason == Reason.INVALID_FIELD
    with pytest.raises(InvalidArgument) as err:
        grid_params(SPEC, {**fields, "trailing_down": True})
    assert "trailing_down" in err.value.message


def test_a_grid_that_cannot_start_at_its_trigger_fails_and_places_nothing() -> None:
    # waits for price <= 94 (first price above); at 94 the stop-loss 95 is above the start price
    g = GridStrategy(SPEC, 1, replace(REF, trigger=94, stop_loss=95))
    assert g.apply(Tick(100, 1)) == []
    assert g.status == "waiting"
    assert g.apply(Tick(94, 2)) == []
    assert g.status == "failed"
    assert "stop-loss price 95 USD must be below the start price 94 USD" in g.failure
    assert g.orders == {} and g.seq == 0


# --- behaviour ---------------------------------------------------------------------------------


def started(params: GridParams = REF, price: int = 100) -> tuple[GridStrategy, Exchange]:
    g = GridStrategy(SPEC, 7, params)
    ex = Exchange(g)
    return g, ex


def test_initial_orders_and_the_base_purchase() -> None:
    g, ex = started()
    intents = ex.apply(Tick(100, 1))
    # buys below the price, nearest first; 100 stays empty; the base for the sells is bought at market
    assert places(intents) == [
        ("q7-1-b1", BUY, 95, 258, 0),
        ("q7-2-b0", BUY, 90, 258, 0),
        ("q7-3-i", BUY, 0, 518, 51_800),  # 518 lots, spending at most 518 x 100
    ]
    # the market buy fills 518 lots at 100 (taker fee 0.2 % = 10360 units of base)
    assert ex.fill("q7-3-i", 518, 100, maker=False) == []
    intents = ex.done("q7-3-i")
    assert places(intents) == [("q7-4-s3", SELL, 105, 258, 0), ("q7-5-s4", SELL, 110, 258, 0)]
    assert g.dust == 5_180_000 - 10_360 - 2 * 258 * LOT  # 9640 units wait for the next counter sell
    assert g.account.quote == 100_000 - 51_800 and g.free_quote() == 100_000 - 51_800 - 47_730


def test_the_base_purchase_may_pay_its_slippage_above_the_start_price() -> None:
    # 1 % slippage: 257 lots per level (258 would need 47_730 + ceil(51_800 x 1.01) + 110 = 100_158);
    # the sells need 2 x 257 lots net of the 0.2 % taker fee = 516 lots, budgeted at 51_600 x 1.01
    params = replace(REF, buy_slippage_ppm=10_000)
    plan = plan_grid(SPEC, params, 100)
    assert (plan.lots, plan.buy_quote, plan.base_lots, plan.base_budget) == (257, 47_545, 516, 52_116)
    assert plan.quote_needed == 47_545 + 52_116 + 110
    # the start price was a trade at the bid; the asks the purchase buys from are at 101, 1 % above:
    # it still gets the 516 lots (516 x 101 = 52_116 cents, its whole budget) and every sell is
    # placed. (Budgeted at the start price it used to get fewer lots and skip the top sell.)
    g, ex = started(params)
    intents = ex.apply(Tick(100, 1))
    assert places(intents)[-1] == ("q7-3-i", BUY, 0, 516, 52_116)
    assert ex.fill("q7-3-i", 300, 101, maker=False) == []
    assert ex.fill("q7-3-i", 216, 101, maker=False) == []
    intents = ex.done("q7-3-i")
    assert places(intents) == [("q7-4-s3", SELL, 105, 257, 0), ("q7-5-s4", SELL, 110, 257, 0)]
    assert g.skipped_orders == 0
    assert g.account.quote == 100_000 - 52_116 and g.free_quote() == 100_000 - 52_116 - 47_545


def test_past_its_slippage_the_base_purchase_buys_less_and_skips_the_top_sell() -> None:
    # the asks are at 110: the budget of 52_116 buys 473 lots (52_030 cents); the exchange ends the
    # order there: the sell at 105 is placed, the one at 110 is skipped and counted
    g, ex = started(replace(REF, buy_slippage_ppm=10_000))
    ex.apply(Tick(100, 1))
    assert ex.fill("q7-3-i", 473, 110, maker=False) == []
    intents = ex.done("q7-3-i", DONE_CANCELED)
    assert places(intents) == [("q7-4-s3", SELL, 105, 257, 0)]
    assert g.skipped_orders == 1


def test_fills_place_the_opposite_order_and_a_repeated_fill_is_ignored() -> None:
    g, ex = started()
    ex.apply(Tick(100, 1))
    ex.fill("q7-3-i", 518, 100, maker=False)
    ex.done("q7-3-i")
    # the sell at 105 fills: a buy of 258 lots goes back at 100; one matched pair
    intents = ex.fill("q7-4-s3", 258)
    assert places(intents) == [("q7-6-b2", BUY, 100, 258, 0)]
    assert g.account.pairs == 1
    # pair profit: 258 x 105 = 27090 - fee 28 = 27062, minus the cost of 2_580_000 units bought at 100
    # (25800 cents for 2_577_420 units net): ceil(25800 x 2_580_000 / 2_577_420) = 25826 -> 1236
    assert g.account.realized == 1236
    before = state(g)
    # the exchange sends the same trade again (same trade id): nothing happens
    assert ex.fill("q7-4-s3", 258, trade_id=ex.trade_id) == []
    assert g.duplicate_fills == 1
    after = state(g)
    after["counters"]["duplicate_fills"] = 0
    assert after == before
    # the buy at 100 fills in two parts: the sell goes up only when it is complete, with the base net of
    # fees plus the dust: 2_577_420 + 9640 = 2_587_060 units -> 258 lots, 7060 units of dust left
    assert ex.fill("q7-6-b2", 100) == []
    intents = ex.fill("q7-6-b2", 158)
    assert places(intents) == [("q7-7-s3", SELL, 105, 258, 0)]
    assert g.dust == 7060
    assert ex.done("q7-6-b2") == []  # its Done after the last fill changes nothing
    assert sorted(o.cid for o in g.open_orders()) == ["q7-1-b1", "q7-2-b0", "q7-5-s4", "q7-7-s3"]


def test_a_partly_filled_order_canceled_by_the_exchange_keeps_its_base_as_dust() -> None:
    g, ex = started()
    ex.apply(Tick(100, 1))
    ex.fill("q7-1-b1", 100)
    assert ex.done("q7-1-b1", DONE_CANCELED) == []
    assert g.dust == 100 * LOT - 1000  # base received net of the maker fee, to go with the next sell
    assert g.order_at(1) is None


def test_trigger_waits_until_the_price_crosses() -> None:
    g, ex = started(replace(REF, trigger=95))
    assert ex.apply(Tick(100, 1)) == [] and g.status == "waiting"
    assert ex.apply(Tick(97, 2)) == []
    intents = ex.apply(Tick(95, 3))
    assert g.status == "running"
    # started at 95: 95 empty, a buy at 90, base bought for the sells at 100, 105, 110
    assert [(c, s, p) for c, s, p, _, _ in places(intents)] == [("q7-1-b0", BUY, 90), ("q7-2-i", BUY, 0)]


def test_stop_loss_cancels_everything_then_sells_the_base() -> None:
    g, ex = started(replace(REF, stop_loss=85, sell_on_stop=True))
    ex.apply(Tick(100, 1))
    ex.fill("q7-3-i", 518, 100, maker=False)
    ex.done("q7-3-i")
    assert ex.apply(Tick(86, 2)) == []
    intents = ex.apply(Tick(85, 3))
    assert sorted(cancels(intents)) == ["q7-1-b1", "q7-2-b0", "q7-4-s3", "q7-5-s4"]
    assert g.status == "stopping" and g.stop_reason == "stop_loss"
    follow = ex.cancel_all(intents)
    # once nothing is open: a market sell of every whole lot held (516 lots; 9640 units stay)
    assert places(follow) == [("q7-6-x", SELL, 0, 516, 0)]
    ex.fill("q7-6-x", 516, 85, maker=False)
    assert ex.done("q7-6-x") == []
    assert g.status == "stopped"
    assert g.account.base == 9640
    assert ex.apply(Tick(200, 4)) == []  # a stopped grid does nothing


def test_take_profit_without_sell_only_cancels() -> None:
    g, ex = started(replace(REF, take_profit=120))
    ex.apply(Tick(100, 1))
    intents = ex.apply(Tick(120, 2))
    assert sorted(cancels(intents)) == ["q7-1-b1", "q7-2-b0", "q7-3-i"]
    assert ex.cancel_all(intents) == []
    assert g.status == "stopped" and g.stop_reason == "take_profit"


def test_user_stop_cancel_and_sell() -> None:
    _g, ex = started()
    ex.apply(Tick(100, 1))
    ex.fill("q7-3-i", 518, 100, maker=False)
    ex.done("q7-3-i")
    intents = ex.apply(Stop(STOP_CANCEL_AND_SELL, 5))
    follow = ex.cancel_all(intents)
    assert places(follow) == [("q7-6-x", SELL, 0, 516, 0)]


def test_trailing_up_moves_the_lowest_buy_above_the_top() -> None:
    g, ex = started(replace(REF, trailing_up=True))
    intents = ex.apply(Tick(112, 1))  # above the range: 110 (nearest) stays empty, four buys
    assert [c for c, *_ in places(intents)] == ["q7-1-b3", "q7-2-b2", "q7-3-b1", "q7-4-b0"]
    assert ex.apply(Tick(114, 2)) == []
    intents = ex.apply(Tick(115, 3))  # the level above the top (115) is reached
    assert cancels(intents) == ["q7-4-b0"]
    assert ex.apply(Tick(116, 4)) == []  # one shift at a time
    # four buys of 256 lots: 256 x (105 + 100 + 95 + 90) + 110 = 99950 cents <= 1000 USD
    assert g.lots == 256
    follow = ex.done("q7-4-b0", DONE_CANCELED)
    # the freed 256 x 90 = 23040 cents buy 209 lots at the old top 110; the range is now 95..115
    assert places(follow) == [("q7-5-b4", BUY, 110, 209, 0)]
    assert (g.bottom, g.top, g.qty(4)) == (1, 5, 209)
    assert ex.apply(Tick(119, 5)) == []
    assert cancels(ex.apply(Tick(120, 6))) == ["q7-3-b1"]


def test_trailing_up_stops_at_its_limit_and_waits_for_open_sells() -> None:
    g, ex = started(replace(REF, trailing_up=True, trailing_limit=115))
    ex.apply(Tick(112, 1))
    ex.cancel_all(ex.apply(Tick(115, 2)))
    assert g.top == 5
    assert ex.apply(Tick(130, 3)) == []  # level 6 (120) is above the limit
    # with a sell open, no shift: start at 100 and go far up without the sells filling
    _g2, ex2 = started(replace(REF, trailing_up=True))
    ex2.apply(Tick(100, 1))
    ex2.fill("q7-3-i", 518, 100, maker=False)
    ex2.done("q7-3-i")
    assert ex2.apply(Tick(130, 2)) == []


def test_snapshot_restore_mid_run_continues_identically() -> None:
    g, ex = started(replace(REF, trailing_up=True, stop_loss=80))
    ex.apply(Tick(100, 1))
    ex.fill("q7-3-i", 518, 100, maker=False)
    ex.done("q7-3-i")
    ex.fill("q7-4-s3", 258)
    ex.fill("q7-6-b2", 100)
    copy = roundtrip(g)
    assert state(copy) == state(g)
    assert isinstance(copy, GridStrategy)
    ex_copy = Exchange(copy)
    ex_copy.placed = dict(ex.placed)
    ex_copy.trade_id = ex.trade_id
    for run in (ex, ex_copy):
        out = run.fill("q7-6-b2", 158)
        out += run.fill("q7-6-b2", 158, trade_id=run.trade_id)  # duplicate after the restore, too
        out += run.apply(Tick(80, 9))
        out += run.cancel_all(out)
        run.history = out  # type: ignore[attr-defined]
    assert ex.history == ex_copy.history  # type: ignore[attr-defined]
    assert state(g) == state(copy)
    assert g.status == "stopped"


def test_levels_far_above_the_top_after_a_restore() -> None:
    # computed upwards from the cached levels (no recursion 5000 deep)
    g, _ = started(replace(REF, spacing=GEOMETRIC, lower=100, upper=200, trailing_up=True))
    data = g.snapshot()
    data["state"]["offset"] = 5000  # a grid that trailed up 5000 levels
    copy = GridStrategy.restore(SPEC, data)
    assert copy.price_at(copy.top + 1) == level_price(100, 200, 4, GEOMETRIC, 5005)


def test_restore_refuses_another_kind_or_market() -> None:
    g, _ = started()
    data = g.snapshot()
    with pytest.raises(ValueError):
        GridStrategy.restore(replace(SPEC, symbol="ETH_USD"), data)


def test_done_of_an_unknown_order_is_ignored() -> None:
    g, ex = started()
    ex.apply(Tick(100, 1))
    before = state(g)
    assert g.apply(Done("q7-99-b1", DONE_FILLED, 2)) == []
    after = state(g)
    assert after["orders"] == before["orders"] and after["account"] == before["account"]

"""DCA: the ladder, the take-profit price net of fees, refusals, and a deal's life on scripted events."""

from __future__ import annotations

from dataclasses import replace
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.common.errors import InvalidArgument, Reason
from services.common.markets import fee
from services.matching.model import BUY, DONE_CANCELED, SELL
from services.quantizer.core import STOP_CANCEL_ORDERS, Funds, Stop, Tick, Timer
from services.quantizer.dca import (
    DcaParams,
    DcaStrategy,
    SafetyOrder,
    dca_ladder,
    deal_quote,
    preview_dca,
    preview_dca_fields,
    safety_deviation,
    safety_quote,
    take_profit_price,
)
from services.quantizer.params import dca_params
from tests.quantizer.util import LOT, SECOND, SPEC, Exchange, cancels, places, roundtrip, state

# 100 USD base order, 200 USD first safety order, 2 safety orders 2 % apart, 1 at a time, take profit 1 %
P = DcaParams(
    base_quote=10_000,
    safety_quote=20_000,
    max_safety=2,
    max_active=1,
    deviation_ppm=20_000,
    take_profit_ppm=10_000,
    cooldown_us=10 * SECOND,
    max_deals=2,
    invest_quote=100_000,
)


# --- ladder ------------------------------------------------------------------------------------


def test_ladder_with_step_scale_one_is_n_times_the_deviation() -> None:
    p = replace(P, safety_quote=10_000, max_safety=3, deviation_ppm=10_000)
    assert dca_ladder(SPEC, p, 1000) == [
        SafetyOrder(1, Fraction(1, 100), 990, 10_000, 10),  # 10000 // 990 = 10 lots
        SafetyOrder(2, Fraction(2, 100), 980, 10_000, 10),
        SafetyOrder(3, Fraction(3, 100), 970, 10_000, 10),
    ]


def test_ladder_with_step_and_volume_scales() -> None:
    # d = 2 %, s = 2: 2 %, 2 % x 3 = 6 %, 2 % x 7 = 14 %; v = 1.5: 200, 300, 450 USD
    p = replace(P, max_safety=3, step_scale_ppm=2_000_000, volume_scale_ppm=1_500_000)
    assert dca_ladder(SPEC, p, 100) == [
        SafetyOrder(1, Fraction(2, 100), 98, 20_000, 204),
        SafetyOrder(2, Fraction(6, 100), 94, 30_000, 319),
        SafetyOrder(3, Fraction(14, 100), 86, 45_000, 523),
    ]
    # s = 0.5: 1 %, 1.5 %, 1.75 % from 1000 -> 990, 985, 982.5 rounded down to 982
    p = replace(P, max_safety=3, deviation_ppm=10_000, step_scale_ppm=500_000)
    assert [(so.deviation, so.price) for so in dca_ladder(SPEC, p, 1000)] == [
        (Fraction(1, 100), 990),
        (Fraction(15, 1000), 985),
        (Fraction(175, 10_000), 982),
    ]


def test_ladder_prices_round_down_from_a_fractional_entry() -> None:
    # entry 100.5 (a base order that filled at two prices): 1 % below is 99.495 -> 99
    p = replace(P, max_safety=1, deviation_ppm=10_000)
    assert dca_ladder(SPEC, p, Fraction(201, 2))[0].price == 99


@given(
    d=st.integers(1, 100_000),
    s=st.integers(1, 3_000_000),
    n=st.integers(1, 30),
)
def test_cumulative_deviation_is_the_geometric_sum(d: int, s: int, n: int) -> None:
    dev = safety_deviation(d, s, n)
    assert dev == sum(Fraction(d, 10**6) * Fraction(s, 10**6) ** k for k in range(n))


def test_volume_scale_sizes() -> None:
    assert [safety_quote(20_000, 1_500_000, n) for n in (1, 2, 3, 4)] == [20_000, 30_000, 45_000, 67_500]
    assert safety_quote(333, 1_100_000, 3) == 402  # 333 x 1.21 = 402.93, rounded down
    assert deal_quote(replace(P, max_safety=3, volume_scale_ppm=1_500_000)) == 10_000 + 95_000


# --- take profit -------------------------------------------------------------------------------


def test_take_profit_price_covers_cost_plus_target_after_the_fee() -> None:
    # 998_000 units (99.8 lots) bought for 10000 cents: sell 99 lots; target ceil(10000 x 1.01) = 10100
    # 102: 99 x 102 = 10098 - 11 fee < 10100; 103: 10197 - 11 = 10186 >= 10100
    assert take_profit_price(SPEC, 998_000, 10_000, 10_000, 1000) == (103, 99)
    # gross of fees the average 10000 / 99.8 lots = 100.2 x 1.01 = 101.2 would round to 102: too low
    # after the fees (and the 0.8 lot that cannot be sold)
    assert take_profit_price(SPEC, 3_035_960, 29_992, 10_000, 1000) == (101, 303)
    assert take_profit_price(SPEC, 9_999, 100, 10_000, 1000) is None  # less than a lot


@given(
    base=st.integers(LOT, 10**9),
    cost=st.integers(1, 10**9),
    tp=st.integers(1, 500_000),
    rate=st.sampled_from([0, 1000, 2000, 7500]),
)
def test_take_profit_price_is_the_lowest_tick_that_reaches_the_target(
    base: int, cost: int, tp: int, rate: int
) -> None:
    price, lots = take_profit_price(SPEC, base, cost, tp, rate)  # type: ignore[misc]
    target = -(-cost * (10**6 + tp) // 10**6)

    def proceeds(p: int) -> int:
        n = SPEC.notional(p, lots)
        return n - fee(n, rate)

    assert lots == base // LOT
    assert proceeds(price) >= target
    assert price == 1 or proceeds(price - 1) < target


# --- refusals ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "reason", "text"),
    [
        ({"max_active": 3}, Reason.VALUE_OUT_OF_RANGE, "max_active_safety_orders must be in 1..2"),
        ({"max_active": 0}, Reason.VALUE_OUT_OF_RANGE, "max_active_safety_orders"),
        ({"deviation_ppm": 0}, Reason.VALUE_OUT_OF_RANGE, "price_deviation"),
        ({"deviation_ppm": 500_000}, Reason.VALUE_OUT_OF_RANGE, "safety order 2 would sit 100.0000 % below"),
        (
            {"stop_loss_ppm": 40_000},
            Reason.INVALID_FIELD,
            "must lie beyond the deepest safety order (4.0000 %",
        ),
        ({"take_profit_ppm": 0}, Reason.VALUE_OUT_OF_RANGE, "take_profit"),
        ({"base_quote": 999}, Reason.BELOW_MIN_NOTIONAL, "base order 9.99 USD is below the minimum 10 USD"),
        ({"invest_quote": 49_999}, Reason.VALUE_OUT_OF_RANGE, "does not cover one deal"),
        ({"max_safety": 101}, Reason.VALUE_OUT_OF_RANGE, "max_safety_orders"),
        ({"step_scale_ppm": 10_000_001}, Reason.VALUE_OUT_OF_RANGE, "step_scale"),
    ],
)
def test_invalid_dca_parameters_are_refused(change: dict[str, int], reason: Reason, text: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        DcaStrategy(SPEC, 3, replace(P, **change))
    assert err.value.reason == reason
    assert text in err.value.message


def test_preview_refuses_a_safety_order_below_the_market_minimum() -> None:
    # entered at 30000 USD, safety order 1 sits at 29400 USD: 200 USD buys 20000 // 29400 = 0 lots
    with pytest.raises(InvalidArgument) as err:
        preview_dca(SPEC, P, 30_000)
    assert err.value.reason == Reason.BELOW_MIN_AMOUNT
    assert "safety order 1 at 29400 USD" in err.value.message


def test_preview_of_a_deal() -> None:
    plan = preview_dca(SPEC, P, 100)
    assert [(so.price, so.lots) for so in plan.ladder] == [(98, 204), (96, 208)]
    assert plan.deal_quote == 50_000
    assert plan.tp_after_base == 103  # 100 lots at 100 net of the taker fee: 998_000 units for 10000
    fields = preview_dca_fields(SPEC, plan)
    assert fields["safety_orders"][1] == {
        "n": 2,
        "deviation": "0.040000",
        "price": "96",
        "quote": "200",
        "amount": "2.08",
    }


def test_edge_parameters() -> None:
    fields = {
        "base_order_quote": "100",
        "safety_order_quote": "200",
        "max_safety_orders": 2,
        "max_active_safety_orders": 1,
        "price_deviation": "0.02",
        "take_profit": "0.01",
        "cooldown_seconds": 10,
        "max_deals": 2,
        "investment": "1000",
    }
    assert dca_params(SPEC, fields) == P
    with pytest.raises(InvalidArgument) as err:
        dca_params(SPEC, {**fields, "price_deviation": "0.0000001"})
    assert err.value.reason == Reason.INVALID_DECIMAL
    with pytest.raises(InvalidArgument):
        dca_params(SPEC, {**fields, "side": "SIDE_SELL"})


# --- a deal's life -----------------------------------------------------------------------------


def open_deal(params: DcaParams = P) -> tuple[DcaStrategy, Exchange]:
    d = DcaStrategy(SPEC, 3, params)
    ex = Exchange(d)
    assert places(ex.apply(Tick(100, 0))) == [("q3-1-d1b", BUY, 0, 0, 10_000)]
    ex.fill("q3-1-d1b", 100, 100, maker=False)  # 100 lots at 100, 2000 units of taker fee
    return d, ex


def test_deal_lifecycle_base_safeties_take_profit_cooldown_and_max_deals() -> None:
    d, ex = open_deal()
    intents = ex.done("q3-1-d1b")
    # safety order 1 at 98 for 200 USD (204 lots); take profit 103 for 99 lots (test above)
    assert places(intents) == [("q3-2-d1s1", BUY, 98, 204, 0), ("q3-3-d1t", SELL, 103, 99, 0)]
    # a partial safety fill: the take profit is canceled, then placed again for the new average
    intents = ex.fill("q3-2-d1s1", 100)
    assert cancels(intents) == ["q3-3-d1t"] and places(intents) == []
    intents = ex.done("q3-3-d1t", DONE_CANCELED)
    # 1_997_000 units for 19800 cents: 199 lots; ceil(19800 x 1.01) = 19998; 101: 20099 - 21 = 20078
    assert places(intents) == [("q3-4-d1t", SELL, 101, 199, 0)]
    # the rest of safety order 1: the take profit is canceled again and safety order 2 goes up
    intents = ex.fill("q3-2-d1s1", 104)
    assert cancels(intents) == ["q3-4-d1t"]
    assert places(intents) == [("q3-5-d1s2", BUY, 96, 208, 0)]
    intents = ex.done("q3-4-d1t", DONE_CANCELED)
    # 3_035_960 units for 29992 cents -> 303 lots at 101
    assert places(intents) == [("q3-6-d1t", SELL, 101, 303, 0)]
    assert (d.account.base, d.account.cost) == (3_035_960, 29_992)
    # the take profit fills: the deal closes once safety order 2 is canceled
    ex.time = 30 * SECOND
    intents = ex.fill("q3-6-d1t", 303)
    assert cancels(intents) == ["q3-5-d1s2"]
    assert ex.done("q3-5-d1s2", DONE_CANCELED) == []
    # proceeds 30603 - 31 = 30572; cost of the 3_030_000 units sold: 29992 x 3_030_000 // 3_035_960 = 29933
    assert d.account.realized == 639 and d.deals_closed == 1 and d.account.pairs == 1
    assert d.deals[-1]["profit"] == 639 and d.deals[-1]["reason"] == "take_profit"
    assert (d.account.base, d.account.cost) == (5960, 59)  # the dust carries over with its cost
    # cooldown: nothing before 40 s, the next deal's base order at 40 s
    assert d.wakeup() == 40 * SECOND
    assert ex.apply(Tick(100, 39 * SECOND)) == []
    assert places(ex.apply(Timer(40 * SECOND))) == [("q3-7-d2b", BUY, 0, 0, 10_000)]
    ex.time = 40 * SECOND
    ex.fill("q3-7-d2b", 100, 100, maker=False)
    intents = ex.done("q3-7-d2b")
    # the dust joins the position: 998_000 + 5960 units for 10059 cents -> 100 lots
    tp = [p for p in places(intents) if p[1] == SELL]
    assert tp == [("q3-9-d2t", SELL, 102, 100, 0)]
    intents = ex.fill("q3-9-d2t", 100)
    ex.cancel_all(intents)
    assert d.deals_closed == 2 and d.status == "stopped" and d.stop_reason == "max_deals"
    assert ex.apply(Timer(10**9)) == [] and ex.apply(Tick(50, 10**9)) == []


def test_stop_loss_cancels_the_deal_and_sells_at_market() -> None:
    d, ex = open_deal(replace(P, stop_loss_ppm=50_000))  # 5 % below the entry 100: 95
    ex.done("q3-1-d1b")
    assert ex.apply(Tick(96, 1)) == []
    intents = ex.apply(Tick(95, 2))
    assert sorted(cancels(intents)) == ["q3-2-d1s1", "q3-3-d1t"]
    follow = ex.cancel_all(intents)
    assert places(follow) == [("q3-4-d1x", SELL, 0, 99, 0)]
    ex.fill("q3-4-d1x", 99, 95, maker=False)
    ex.done("q3-4-d1x")
    # 99 x 95 = 9405 - 19 fee = 9386 for a cost of 10000 x 990_000 // 998_000 = 9919: -533
    assert d.account.realized == -533
    assert d.deals[-1]["reason"] == "stop_loss" and d.phase == "idle"


def test_trailing_take_profit_sells_when_the_price_falls_back() -> None:
    d, ex = open_deal(replace(P, trailing_ppm=10_000))
    intents = ex.done("q3-1-d1b")
    assert [p[1] for p in places(intents)] == [BUY]  # no resting take profit when trailing
    # the take-profit price with the taker fee: 99 lots, 103: 10197 - 21 = 10176 >= 10100 (102 is not)
    assert ex.apply(Tick(102, 1)) == []
    assert ex.apply(Tick(104, 2)) == [] and d.trail_active  # trailing from 104
    assert ex.apply(Tick(110, 3)) == []  # new high: the stop is 110 x 0.99 = 108.9 -> 108
    assert ex.apply(Tick(109, 4)) == []
    intents = ex.apply(Tick(108, 5))
    assert cancels(intents) == ["q3-2-d1s1"]
    assert places(ex.cancel_all(intents)) == [("q3-3-d1x", SELL, 0, 99, 0)]


def test_a_base_order_without_fill_is_retried_later() -> None:
    d = DcaStrategy(SPEC, 3, P)
    ex = Exchange(d)
    ex.apply(Tick(100, 0))
    assert ex.done("q3-1-d1b", DONE_CANCELED) == []
    assert d.phase == "idle" and d.deal == 0 and d.base_failures == 1
    assert d.wakeup() == 60 * SECOND
    assert places(ex.apply(Timer(60 * SECOND))) == [("q3-2-d1b", BUY, 0, 0, 10_000)]


def test_without_funds_the_deal_waits_for_them() -> None:
    d = DcaStrategy(SPEC, 3, P)
    ex = Exchange(d)
    d.account.quote = 5_000  # someone took the money out of the sub-account
    assert ex.apply(Tick(100, 0)) == [] and d.waiting_funds and d.wakeup() is None
    assert places(ex.apply(Funds(0, 5_000, 1))) == [("q3-1-d1b", BUY, 0, 0, 10_000)]


def test_user_stop_cancels_the_deal_orders() -> None:
    d, ex = open_deal()
    ex.done("q3-1-d1b")
    intents = ex.apply(Stop(STOP_CANCEL_ORDERS, 5))
    assert sorted(cancels(intents)) == ["q3-2-d1s1", "q3-3-d1t"]
    assert ex.cancel_all(intents) == []
    assert d.status == "stopped"


def test_snapshot_restore_mid_deal_continues_identically() -> None:
    d, ex = open_deal()
    ex.done("q3-1-d1b")
    ex.fill("q3-2-d1s1", 100)
    copy = roundtrip(d)
    assert state(copy) == state(d)
    ex2 = Exchange(copy)
    ex2.placed, ex2.trade_id = dict(ex.placed), ex.trade_id
    outs = []
    for run in (ex, ex2):
        out = run.done("q3-3-d1t", DONE_CANCELED)
        out += run.fill("q3-2-d1s1", 104)
        out += run.fill("q3-2-d1s1", 104, trade_id=run.trade_id)  # repeated
        out += run.cancel_all(out)
        out += run.apply(Tick(90, 20))
        outs.append(out)
    assert outs[0] == outs[1]
    assert state(d) == state(copy)

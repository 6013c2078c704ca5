"""Recurring buys: runs on schedule, a run without funds is skipped and recorded, the plan continues."""

from __future__ import annotations

import pytest

from services.common.errors import InvalidArgument, Reason
from services.matching.model import BUY, DONE_CANCELED, DONE_REJECTED
from services.quantizer.core import Funds, Tick, Timer
from services.quantizer.dca import RecurringBuy, RecurringParams, add_months
from services.quantizer.params import recurring_params
from tests.quantizer.util import DAY, SPEC, Exchange, places, roundtrip, state

T0 = 1_704_067_200_000_000  # 2024-01-01 00:00 UTC
P = RecurringParams(amount_quote=10_000, start_time=T0, interval_us=DAY, invest_quote=25_000)


def buy(ex: Exchange, cid: str, lots: int, price: int = 100) -> None:
    ex.fill(cid, lots, price, maker=False)
    ex.done(cid)


def test_runs_buy_then_a_run_without_funds_is_skipped_and_the_plan_continues() -> None:
    r = RecurringBuy(SPEC, 5, P)
    ex = Exchange(r)
    assert r.wakeup() == T0
    assert places(ex.apply(Timer(T0))) == [("q5-1-r0", BUY, 0, 0, 10_000)]
    buy(ex, "q5-1-r0", 100)
    assert r.wakeup() == T0 + DAY
    assert places(ex.apply(Timer(T0 + DAY))) == [("q5-2-r1", BUY, 0, 0, 10_000)]
    buy(ex, "q5-2-r1", 100)
    # 5000 cents left: run 2 is skipped and recorded, nothing is placed
    assert ex.apply(Timer(T0 + 2 * DAY)) == []
    assert r.runs[-1] == {
        "run": 2,
        "time": T0 + 2 * DAY,
        "status": "skipped",
        "reason": "insufficient funds: 50 USD free",
        "quote": 0,
        "base": 0,
    }
    assert r.wakeup() == T0 + 3 * DAY
    # money arrives; run 3 buys again
    ex.apply(Funds(0, 20_000, T0 + 2 * DAY + 1))
    assert places(ex.apply(Timer(T0 + 3 * DAY))) == [("q5-3-r3", BUY, 0, 0, 10_000)]
    buy(ex, "q5-3-r3", 100)
    assert (r.bought_runs, r.skipped_runs) == (3, 1)
    assert r.runs[0]["base"] == 100 * 10_000 - 2000  # net of the taker fee
    assert r.account.invested_quote == 45_000


def test_runs_missed_while_down_are_recorded_and_the_latest_runs() -> None:
    r = RecurringBuy(SPEC, 5, P)
    ex = Exchange(r)
    ex.apply(Timer(T0))
    buy(ex, "q5-1-r0", 100)
    # nothing arrives for three and a half days: runs 1 and 2 are missed, run 3 runs
    assert places(ex.apply(Tick(100, T0 + 3 * DAY + DAY // 2))) == [("q5-2-r3", BUY, 0, 0, 10_000)]
    assert [(x["run"], x["status"], x["reason"]) for x in r.runs] == [
        (0, "bought", ""),
        (1, "skipped", "missed"),
        (2, "skipped", "missed"),
    ]
    assert r.wakeup() == T0 + 4 * DAY


def test_a_run_refused_or_without_fill_is_recorded_as_skipped() -> None:
    r = RecurringBuy(SPEC, 5, P)
    ex = Exchange(r)
    ex.apply(Timer(T0))
    ex.done("q5-1-r0", DONE_REJECTED)
    ex.apply(Timer(T0 + DAY))
    ex.done("q5-2-r1", DONE_CANCELED)
    assert [(x["run"], x["reason"]) for x in r.runs] == [
        (0, "order rejected without a fill"),
        (1, "order canceled without a fill"),
    ]
    assert r.rejected_orders == 1


def test_a_run_while_the_previous_is_open_is_skipped() -> None:
    r = RecurringBuy(SPEC, 5, P)
    ex = Exchange(r)
    ex.apply(Timer(T0))
    assert ex.apply(Timer(T0 + DAY)) == []
    assert r.runs[-1]["reason"] == "previous run still open"


def test_max_runs_stops_the_plan() -> None:
    r = RecurringBuy(
        SPEC,
        5,
        RecurringParams(amount_quote=1000, start_time=T0, interval_us=DAY, max_runs=2, invest_quote=10**6),
    )
    ex = Exchange(r)
    ex.apply(Timer(T0))
    buy(ex, "q5-1-r0", 10)
    ex.apply(Timer(T0 + DAY))
    assert r.status == "running"
    buy(ex, "q5-2-r1", 10)
    assert r.status == "stopped" and r.stop_reason == "max_runs" and r.wakeup() is None


def test_monthly_runs_keep_the_day_and_clamp_to_the_month_end() -> None:
    jan31 = T0 + 30 * DAY + 12 * 3600 * 10**6  # 2024-01-31 12:00
    assert add_months(jan31, 1) == T0 + (31 + 28) * DAY + 12 * 3600 * 10**6  # 2024-02-29 12:00
    assert add_months(jan31, 2) == T0 + (31 + 29 + 30) * DAY + 12 * 3600 * 10**6  # 2024-03-31 12:00
    assert add_months(jan31, 13) == add_months(jan31 + 366 * DAY, 1)  # 2025-02-28
    r = RecurringBuy(SPEC, 5, RecurringParams(amount_quote=1000, start_time=jan31, interval_months=1))
    assert [r.run_time(k) for k in range(3)] == [jan31, add_months(jan31, 1), add_months(jan31, 2)]


def test_invalid_recurring_parameters() -> None:
    with pytest.raises(InvalidArgument) as err:
        RecurringBuy(SPEC, 5, RecurringParams(amount_quote=999, start_time=T0, interval_us=DAY))
    assert err.value.reason == Reason.BELOW_MIN_NOTIONAL
    with pytest.raises(InvalidArgument) as err:
        RecurringBuy(SPEC, 5, RecurringParams(amount_quote=1000, start_time=T0, interval_us=60 * 10**6))
    assert "interval_us must be in 3600000000.." in err.value.message
    with pytest.raises(InvalidArgument):
        RecurringBuy(
            SPEC, 5, RecurringParams(amount_quote=1000, start_time=T0, interval_us=DAY, interval_months=1)
        )
    assert (
        recurring_params(SPEC, {"amount": "10", "interval": "RECURRING_INTERVAL_MONTH"}).interval_months == 1
    )
    assert recurring_params(SPEC, {"amount": "10", "interval": "1w"}).interval_us == 7 * DAY
    with pytest.raises(InvalidArgument):
        recurring_params(SPEC, {"amount": "10", "interval": "fortnight"})


def test_snapshot_restore_mid_plan() -> None:
    r = RecurringBuy(SPEC, 5, P)
    ex = Exchange(r)
    ex.apply(Timer(T0))
    buy(ex, "q5-1-r0", 100)
    ex.apply(Timer(T0 + DAY))
    copy = roundtrip(r)
    assert state(copy) == state(r)
    ex2 = Exchange(copy)
    ex2.placed, ex2.trade_id = dict(ex.placed), ex.trade_id
    for run in (ex, ex2):
        buy(run, "q5-2-r1", 100)
        run.apply(Timer(T0 + 2 * DAY))
        run.apply(Timer(T0 + 5 * DAY))
    assert state(r) == state(copy)

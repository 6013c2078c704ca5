"""QuantizerService rules in a real exchange: bad parameters refused with their reason and nothing
placed, per-user limits, idempotent create, funds isolation through sub-accounts (the invariant),
pause / resume, the three stop modes (and the slippage cap) and funds returned on stop."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from exchange.v1 import accounts_service_pb2 as apb
from exchange.v1 import quantizer_service_pb2 as qpb

from services.common.rpc import error_reason
from testkit.cluster import assert_invariants
from tests.quantizer.live import (
    BUY,
    GRID,
    MAKER,
    SELL,
    TAKER,
    Live,
    new_cluster,
    wait_for,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    cluster = new_cluster(
        Path(tmp_path_factory.mktemp("rules")) / "exchange",
        max_strategies_per_user=3,
        max_capital={"USDT": "2500"},
    )
    try:
        cluster.start()
        lv = Live(cluster)
        lv.deposit(MAKER, "BTC", "10")
        lv.deposit(MAKER, "ETH", "100")
        lv.deposit(TAKER, "USDT", "1000000")
        lv.deposit(TAKER, "BTC", "10")
        lv.deposit(TAKER, "ETH", "100")
        lv.order(MAKER, SELL, "30000", "1")  # the grids' initial purchases
        lv.order(TAKER, BUY, "30000", "0.001")  # the first price
        cluster.wait_quiet()
        yield lv
    finally:
        cluster.stop()


def refused(lv: Live, request: qpb.CreateStrategyRequest) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        lv.create_request(request)
    err = info.value
    return err.code(), error_reason(err)  # type: ignore[attr-defined]


def grid(**changes: object) -> qpb.GridConfig:
    g = qpb.GridConfig()
    g.CopyFrom(GRID)
    for k, v in changes.items():
        setattr(g, k, v)
    return g


def test_bad_parameters_refused_with_nothing_placed(live: Live) -> None:
    user = 11
    live.deposit(user, "USDT", "2000")
    before = live.balances(user)
    cases = [
        (grid(lower_price="31000", upper_price="29000"), "BTC_USDT", "INVALID_ARGUMENT", {"INVALID_FIELD"}),
        (grid(intervals=0), "BTC_USDT", "INVALID_ARGUMENT", {"VALUE_OUT_OF_RANGE"}),
        (grid(lower_price="29000.001"), "BTC_USDT", "INVALID_ARGUMENT", {"INVALID_DECIMAL"}),  # 3 decimals
        (  # 4 intervals in 0.03 USDT: levels finer than the 0.01 tick
            grid(lower_price="29000", upper_price="29000.03"),
            "BTC_USDT",
            "INVALID_ARGUMENT",
            {"PRICE_NOT_ON_TICK"},
        ),
        (  # a step of 1 USDT on 30000 does not beat twice the 0.1 % maker fee
            grid(lower_price="29990", upper_price="30010", intervals=20),
            "BTC_USDT",
            "INVALID_ARGUMENT",
            {"INVALID_FIELD"},
        ),
        (grid(investment="10"), "BTC_USDT", "INVALID_ARGUMENT", {"BELOW_MIN_NOTIONAL", "BELOW_MIN_AMOUNT"}),
        (grid(investment="3000"), "BTC_USDT", "FAILED_PRECONDITION", {"INSUFFICIENT_BALANCE"}),
        (grid(investment="ten"), "BTC_USDT", "INVALID_ARGUMENT", {"INVALID_DECIMAL"}),
        (grid(stop_loss_price="30100"), "BTC_USDT", "INVALID_ARGUMENT", {"INVALID_FIELD"}),
        (grid(trailing_down=True), "BTC_USDT", "INVALID_ARGUMENT", {"INVALID_FIELD"}),
        (GRID, "NOPE_USDT", "NOT_FOUND", {"UNKNOWN_MARKET"}),
    ]
    for g, market, code, reasons in cases:
        got_code, reason = refused(
            live, qpb.CreateStrategyRequest(user_id=user, market=market, grid=g, client_strategy_id="bad")
        )
        assert (got_code.name, reason) in {(code, r) for r in reasons}, (g, got_code, reason)
    code, reason = refused(live, qpb.CreateStrategyRequest(user_id=user, market="BTC_USDT"))
    assert (code.name, reason) == ("INVALID_ARGUMENT", "INVALID_FIELD")
    code, reason = refused(
        live,
        qpb.CreateStrategyRequest(user_id=user, market="BTC_USDT", grid=GRID, client_strategy_id="x" * 65),
    )
    assert (code.name, reason) == ("INVALID_ARGUMENT", "FIELD_TOO_LONG")
    # nothing was created, placed or moved
    assert not live.quantizer.ListStrategies(qpb.ListStrategiesRequest(user_id=user), timeout=10).strategies
    assert not live.open_orders(user)
    assert live.balances(user) == before


def test_limits_and_idempotent_create(live: Live) -> None:
    user = 12
    live.deposit(user, "USDT", "10000")
    small = grid(investment="800")
    first = live.create(small, "a", user)
    again = live.create_request(
        qpb.CreateStrategyRequest(user_id=user, market="BTC_USDT", grid=small, client_strategy_id="a")
    )
    assert again.duplicate and again.strategy.strategy_id == first.strategy_id
    code, reason = refused(
        live, qpb.CreateStrategyRequest(user_id=user, market="BTC_USDT", grid=GRID, client_strategy_id="a")
    )
    assert (code.name, reason) == ("ALREADY_EXISTS", "IDEMPOTENCY_KEY_REUSED")
    live.create(small, "b", user)
    third = live.create(small, "c", user)  # 2400 USDT of the 2500 allowed
    code, reason = refused(
        live, qpb.CreateStrategyRequest(user_id=user, market="BTC_USDT", grid=small, client_strategy_id="d")
    )
    assert (code.name, reason) == ("FAILED_PRECONDITION", "STRATEGY_LIMIT_EXCEEDED")  # 3 running
    live.quantizer.StopStrategy(
        qpb.StopStrategyRequest(strategy_id=third.strategy_id, mode=qpb.STOP_MODE_CANCEL_ORDERS), timeout=10
    )
    wait_for("stopped", lambda: live.strategy(third.strategy_id).state == qpb.STRATEGY_STATE_STOPPED)
    code, reason = refused(
        live,
        qpb.CreateStrategyRequest(
            user_id=user, market="BTC_USDT", grid=grid(investment="1000"), client_strategy_id="e"
        ),
    )
    assert (code.name, reason) == ("FAILED_PRECONDITION", "STRATEGY_LIMIT_EXCEEDED")  # 1600 + 1000 > 2500
    live.create(grid(investment="850"), "f", user)  # 2450 fits


def holdings(live: Live, trading_user: int, spec_base: str, spec_quote: str) -> tuple[int, int]:
    b = live.balances(trading_user)
    base = sum(b.get(spec_base, (0, 0)))
    quote = sum(b.get(spec_quote, (0, 0)))
    return base, quote


def test_funds_isolation_pause_resume_and_return(live: Live) -> None:
    user = 13
    live.deposit(user, "USDT", "3000")
    # levels of their own (29100, 29550, 30000, 30450, 30900): the other tests' grids rest elsewhere
    iso = grid(lower_price="29100", upper_price="30900", investment="1000")
    s = live.create(iso, "iso", user)
    s = live.settled(s.strategy_id, fills=1)
    sub = s.trading_user_id
    assert sub >= 1 << 62 and sub != user
    spec = live.spec

    def isolated() -> qpb.Strategy:
        st = live.strategy(s.strategy_id)
        base, quote = holdings(live, sub, "BTC", "USDT")
        assert (base, quote) == (
            spec.base.parse(st.report.base_held, allow_zero=True),
            spec.quote.parse(st.report.quote_held, allow_zero=True),
        )
        return st

    isolated()
    # the owner trades by hand: its order and balance never mix with the strategy's
    manual = live.order(user, BUY, "28000", "0.01")
    owner = live.balances(user)
    assert owner["USDT"] == (spec.quote.parse("1720"), spec.quote.parse("280"))
    # pause: a fill is booked but nothing new is placed until resume
    live.quantizer.PauseStrategy(qpb.PauseStrategyRequest(strategy_id=s.strategy_id), timeout=10)
    live.step(sub, SELL, "29550")
    wait_for("fill held", lambda: len(live.open_orders(sub)) == 3)
    assert live.strategy(s.strategy_id).state == qpb.STRATEGY_STATE_PAUSED
    live.quantizer.ResumeStrategy(qpb.ResumeStrategyRequest(strategy_id=s.strategy_id), timeout=10)
    live.settled(s.strategy_id, fills=2)
    isolated()
    assert live.balances(user) == owner
    assert [o.order_id for o in live.open_orders(user)] == [manual.order.order_id]
    # stop (cancel orders): every unit goes back to the owner
    st = live.strategy(s.strategy_id)
    held_base = spec.base.parse(st.report.base_held, allow_zero=True)
    held_quote = spec.quote.parse(st.report.quote_held, allow_zero=True)
    live.quantizer.StopStrategy(
        qpb.StopStrategyRequest(strategy_id=s.strategy_id, mode=qpb.STOP_MODE_CANCEL_ORDERS), timeout=10
    )
    done = wait_for("funds returned", lambda: (x := live.strategy(s.strategy_id)).funds_returned and x)
    assert done.state == qpb.STRATEGY_STATE_STOPPED
    assert holdings(live, sub, "BTC", "USDT") == (0, 0)
    after = live.balances(user)
    assert after["USDT"] == (owner["USDT"][0] + held_quote, owner["USDT"][1])
    assert after.get("BTC", (0, 0)) == (held_base, 0)
    assert_invariants(live.cluster.wait_quiet())


def test_stop_keep_orders_and_sell_with_slippage_cap(live: Live) -> None:
    user = 14
    live.deposit(user, "USDT", "5000")
    live.order(TAKER, BUY, "30000", "0.001")  # the last price back at 30000 (the grids start there)
    live.cluster.wait_quiet()
    keep = live.settled(live.create(grid(investment="800"), "keep", user).strategy_id, fills=1)
    live.quantizer.StopStrategy(
        qpb.StopStrategyRequest(strategy_id=keep.strategy_id, mode=qpb.STOP_MODE_KEEP_ORDERS), timeout=10
    )
    kept = wait_for("round 0 returned", lambda: live.strategy(keep.strategy_id))
    assert kept.state == qpb.STRATEGY_STATE_STOPPED
    assert len(live.open_orders(keep.trading_user_id)) == 4  # left in the book
    assert not kept.funds_returned  # the kept orders still hold funds in the sub-account

    sell = live.settled(live.create(grid(investment="800"), "sell", user).strategy_id, fills=1)
    capped = live.settled(live.create(grid(investment="800"), "capped", user).strategy_id, fills=1)
    live.order(TAKER, BUY, "29800", "0.05")  # the best bid: 0.67 % under the last price 30000
    live.cluster.wait_quiet()
    # a 1 % cap sells at 29800 (limit 29700); a 0.1 % cap (limit 29970) cannot sell there
    live.quantizer.StopStrategy(
        qpb.StopStrategyRequest(
            strategy_id=sell.strategy_id, mode=qpb.STOP_MODE_CANCEL_AND_SELL, max_slippage="0.01"
        ),
        timeout=10,
    )
    live.quantizer.StopStrategy(
        qpb.StopStrategyRequest(
            strategy_id=capped.strategy_id, mode=qpb.STOP_MODE_CANCEL_AND_SELL, max_slippage="0.001"
        ),
        timeout=10,
    )
    sold = wait_for("sold", lambda: (x := live.strategy(sell.strategy_id)).funds_returned and x)
    kept_base = wait_for("capped", lambda: (x := live.strategy(capped.strategy_id)).funds_returned and x)
    assert sold.state == kept_base.state == qpb.STRATEGY_STATE_STOPPED
    assert (
        live.spec.base.parse(sold.report.base_held, allow_zero=True)
        < live.spec.min_amount_lots * live.spec.base_units_per_lot
    )
    assert sold.report.last_price == "29800"
    assert live.spec.base.parse(kept_base.report.base_held, allow_zero=True) > 0  # nothing sold under the cap
    for st in (sold, kept_base):
        assert not live.open_orders(st.trading_user_id)
    # a cancel stop on the stopped strategy releases its kept orders, and what they held goes back
    live.quantizer.StopStrategy(
        qpb.StopStrategyRequest(strategy_id=keep.strategy_id, mode=qpb.STOP_MODE_CANCEL_ORDERS), timeout=10
    )
    wait_for("kept orders' funds returned", lambda: live.strategy(keep.strategy_id).funds_returned)
    assert not live.open_orders(keep.trading_user_id)
    assert holdings(live, keep.trading_user_id, "BTC", "USDT") == (0, 0)
    assert_invariants(live.cluster.wait_quiet())


def test_preview_rpcs(live: Live) -> None:
    p = live.quantizer.PreviewGrid(
        qpb.PreviewGridRequest(market="BTC_USDT", grid=GRID, price="30000"), timeout=10
    )
    assert list(p.levels) == ["29000", "29500", "30000", "30500", "31000"]
    assert (p.buy_orders, p.sell_orders, p.empty_level) == (2, 2, 2)
    # 1000 USDT / (29000 + 29500 for the buys + 2 x 30000 x 1.01 / 0.998 for the sells' base, bought
    # with the default 1 % slippage and net of the 0.2 % taker fee) = 0.008388 BTC
    assert p.amount_per_level == "0.00838"
    # the sells need 2 x 0.00838 net = 0.016794 gross -> 0.0168 BTC, budgeted at 0.0168 x 30000 x 1.01
    assert (p.initial_buy_amount, p.initial_buy_quote) == ("0.0168", "509.04")
    d = live.quantizer.PreviewDca(
        qpb.PreviewDcaRequest(
            market="BTC_USDT",
            price="30000",
            dca=qpb.DcaConfig(
                base_order_quote="100",
                safety_order_quote="100",
                max_safety_orders=2,
                max_active_safety_orders=1,
                price_deviation="0.01",
                step_scale="2",
                volume_scale="2",
                take_profit="0.01",
                investment="1000",
            ),
        ),
        timeout=10,
    )
    # deviations d, d + d*s: 1 % and 3 %
    assert [so.deviation for so in d.safety_orders] == ["0.010000", "0.030000"]
    assert [so.price for so in d.safety_orders] == ["29700", "29100"]
    with pytest.raises(grpc.RpcError) as info:
        live.quantizer.PreviewGrid(qpb.PreviewGridRequest(market="ETH_BTC", grid=GRID), timeout=10)
    assert info.value.code() in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.INVALID_ARGUMENT)  # type: ignore[attr-defined]


def test_callers_are_authenticated_and_authorized(live: Live) -> None:
    from exchange.v1 import quantizer_service_pb2_grpc as qgrpc

    anonymous = qgrpc.QuantizerServiceStub(live.cluster.anonymous_channel("quantizer-0"))
    with pytest.raises(grpc.RpcError) as info:
        anonymous.ListStrategies(qpb.ListStrategiesRequest(user_id=1), timeout=10)
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED  # type: ignore[attr-defined]
    reader = qgrpc.QuantizerServiceStub(live.cluster.channel("quantizer-0", "reader"))
    reader.ListStrategies(qpb.ListStrategiesRequest(user_id=1), timeout=10)
    with pytest.raises(grpc.RpcError) as info:
        reader.CreateStrategy(qpb.CreateStrategyRequest(user_id=1, market="BTC_USDT", grid=GRID), timeout=10)
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED  # type: ignore[attr-defined]
    trader = qgrpc.QuantizerServiceStub(live.cluster.channel("quantizer-0", "trader"))
    trader.PreviewGrid(qpb.PreviewGridRequest(market="BTC_USDT", grid=GRID, price="30000"), timeout=10)


def test_live_dca_deal_and_recurring_buy(live: Live) -> None:
    import time

    user = 15
    live.deposit(user, "USDT", "3000")
    live.accounts.CancelAllOrders(apb.CancelAllOrdersRequest(user_id=TAKER, market="BTC_USDT"), timeout=10)
    live.order(MAKER, SELL, "30000", "0.1")  # liquidity for the market buys
    live.cluster.wait_quiet()
    dca = qpb.DcaConfig(
        base_order_quote="100",
        safety_order_quote="100",
        max_safety_orders=2,
        max_active_safety_orders=1,
        price_deviation="0.01",
        take_profit="0.01",
        investment="500",
    )
    s = live.create_request(
        qpb.CreateStrategyRequest(user_id=user, market="BTC_USDT", dca=dca, client_strategy_id="dca")
    ).strategy
    s = live.settled(s.strategy_id, fills=1, open_orders=2)  # base order filled; safety 1 and take profit
    orders = {o.client_order_id.rsplit("-", 1)[-1]: o for o in live.open_orders(s.trading_user_id)}
    assert orders["d1s1"].price == "29700"
    tp_before = live.spec.parse_price(orders["d1t"].price)
    assert tp_before > 30000 * 101 // 100
    live.step(s.trading_user_id, SELL, "29700")  # the safety order fills: the take profit comes down
    s = live.settled(s.strategy_id, fills=2, open_orders=2)
    orders = {o.client_order_id.rsplit("-", 1)[-1]: o for o in live.open_orders(s.trading_user_id)}
    assert live.spec.parse_price(orders["d1t"].price) < tp_before and "d1s2" in orders

    rec = qpb.RecurringBuyConfig(
        amount="50",
        interval=qpb.RECURRING_INTERVAL_HOUR,
        start_time_us=time.time_ns() // 1000,
        max_runs=2,
        investment="100",
    )
    r = live.create_request(
        qpb.CreateStrategyRequest(user_id=user, market="BTC_USDT", recurring=rec, client_strategy_id="rec")
    ).strategy
    done = wait_for(
        "the first recurring buy", lambda: (x := live.strategy(r.strategy_id)).report.fills >= 1 and x
    )
    assert done.report.fills == 1 and live.spec.base.parse(done.report.base_held) > 0

"""Accounts: freezing, settlement and release, end to end through the state machines (in process)."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.accounts.ledger import FEE_ACCOUNT
from services.common.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound, Reason
from testkit.accounts_sim import MiniExchange, default_catalog, replay

BUY, SELL = 1, 2
LIMIT, MARKET = 1, 2
USDT = 10**8  # units per USDT
BTC = 10**8


def funded(users: dict[int, dict[str, str]] | None = None) -> MiniExchange:
    x = MiniExchange()
    for user, assets in (users or {1: {"USDT": "100000"}, 2: {"BTC": "10"}}).items():
        for asset, amount in assets.items():
            x.deposit(user, asset, amount)
    return x


def test_deposit_is_idempotent_and_withdraw_checks_available() -> None:
    x = MiniExchange()
    first = x.deposit(1, "USDT", "100.5", "tx-1")
    again = x.deposit(1, "USDT", "100.5", "tx-1")
    assert not first.result.duplicate and again.result.duplicate
    assert x.balance(1, "USDT") == (100_50000000, 0)
    with pytest.raises(FailedPrecondition):
        x.deposit(1, "USDT", "7", "tx-1")  # same id, another amount
    with pytest.raises(FailedPrecondition):
        x.withdraw(1, "USDT", "100.50000001")
    x.withdraw(1, "USDT", "0.5", "w-1")
    assert x.balance(1, "USDT") == (100 * USDT, 0)
    with pytest.raises(NotFound):
        x.deposit(1, "XYZ", "1")
    for bad in ("NaN", "-1", "1e3", "inf", "0", "0.000000001"):
        with pytest.raises(InvalidArgument) as info:
            x.deposit(1, "USDT", bad)
        assert info.value.reason == Reason.INVALID_DECIMAL
    with pytest.raises(InvalidArgument):
        x.deposit(0, "USDT", "1")
    x.check_invariants()
    assert len(x.accounts_journal) == 2  # refused and duplicate commands are not journaled


def test_limit_buy_freezes_and_cancel_releases() -> None:
    x = funded()
    o = x.place(1, "BTC_USDT", BUY, price="30000", amount="0.5").order
    assert x.balance(1, "USDT") == (85000 * USDT, 15000 * USDT)
    assert o.status == 2  # OPEN: accepted by matching
    x.cancel(1, o.order_id)
    assert x.balance(1, "USDT") == (100000 * USDT, 0)
    assert x.accounts.ledger.lookup(1, o.order_id).status == 5
    x.check_invariants()


def test_fill_settles_both_sides_with_fees_and_releases_price_improvement() -> None:
    x = funded()
    ask = x.place(2, "BTC_USDT", SELL, price="30000", amount="0.5").order
    bid = x.place(1, "BTC_USDT", BUY, price="30100", amount="0.2").order
    # Taker buyer paid 0.2 x 30000 (maker's price); the 0.2 x 100 improvement went back.
    assert x.balance(1, "USDT") == ((100000 - 6000) * USDT, 0)
    # Taker fee 0.2 % in BTC received: 0.2 BTC - 0.0004.
    assert x.balance(1, "BTC") == (int(0.1996 * BTC), 0)
    # Maker seller: 0.3 BTC still frozen, got 6000 USDT minus 0.1 % fee.
    assert x.balance(2, "BTC") == (int(9.5 * BTC), int(0.3 * BTC))
    assert x.balance(2, "USDT") == ((6000 - 6) * USDT, 0)
    assert x.balance(FEE_ACCOUNT, "BTC") == (40000, 0)
    assert x.balance(FEE_ACCOUNT, "USDT") == (6 * USDT, 0)
    assert x.accounts.ledger.lookup(1, bid.order_id).status == 4
    assert x.accounts.ledger.lookup(2, ask.order_id).status == 3
    x.check_invariants()


def test_market_buy_spends_budget_and_returns_the_rest() -> None:
    x = funded()
    x.place(2, "BTC_USDT", SELL, price="30000", amount="0.1")
    x.place(2, "BTC_USDT", SELL, price="31000", amount="0.1")
    o = x.place(1, "BTC_USDT", BUY, type=MARKET, quote_amount="5000").order
    # 0.1 at 30000 = 3000; then 2000 buys 0.06451 BTC at 31000 (lots of 0.00001) = 1999.81
    done = x.accounts.ledger.lookup(1, o.order_id)
    assert done.status == 4
    assert done.filled_quote == 3000 * USDT + 199981000000
    assert x.balance(1, "USDT") == (100000 * USDT - done.filled_quote, 0)
    x.check_invariants()


def test_market_sell_without_liquidity_is_canceled_and_released() -> None:
    x = funded()
    o = x.place(2, "BTC_USDT", SELL, type=MARKET, amount="1").order
    assert x.accounts.ledger.lookup(2, o.order_id).status == 5
    assert x.balance(2, "BTC") == (10 * BTC, 0)
    x.check_invariants()


def test_move_up_freezes_more_and_move_down_releases() -> None:
    x = funded({1: {"USDT": "20000"}, 2: {"BTC": "1"}})
    o = x.place(1, "BTC_USDT", BUY, price="30000", amount="0.5").order
    with pytest.raises(FailedPrecondition):
        x.amend(1, o.order_id, new_price="50000")  # needs 25000
    x.amend(1, o.order_id, new_price="39000")
    assert x.balance(1, "USDT") == ((20000 - 19500) * USDT, 19500 * USDT)
    x.amend(1, o.order_id, new_price="20000")
    assert x.balance(1, "USDT") == ((20000 - 10000) * USDT, 10000 * USDT)
    x.check_invariants()


def test_post_only_move_that_would_take_is_refused_and_its_extra_hold_released() -> None:
    x = funded()
    x.place(2, "BTC_USDT", SELL, price="30000", amount="0.1")
    o = x.place(1, "BTC_USDT", BUY, price="29000", amount="0.1", post_only=True).order
    x.amend(1, o.order_id, new_price="30500")
    led = x.accounts.ledger
    assert led.lookup(1, o.order_id).price == 29000 * 100
    assert x.balance(1, "USDT")[1] == 2900 * USDT
    x.check_invariants()


def test_reduce_keeps_order_and_releases() -> None:
    x = funded()
    o = x.place(2, "BTC_USDT", SELL, price="30000", amount="1").order
    x.amend(2, o.order_id, new_amount="0.4")
    assert x.balance(2, "BTC") == (int(9.6 * BTC), int(0.4 * BTC))
    with pytest.raises(FailedPrecondition) as info:
        x.amend(2, o.order_id, new_amount="0.5")  # only lower
    assert info.value.reason == Reason.ORDER_NOT_AMENDABLE
    x.check_invariants()


def test_gtd_order_expires_and_is_released() -> None:
    x = funded()
    o = x.place(
        1, "BTC_USDT", BUY, price="30000", amount="0.1", time_in_force=4, expire_time_us=x.time_us + 5_000_000
    ).order
    x.tick(6_000_000)
    x.expire()
    assert x.accounts.ledger.lookup(1, o.order_id).status == 6
    assert x.balance(1, "USDT") == (100000 * USDT, 0)
    with pytest.raises(InvalidArgument):
        x.place(1, "BTC_USDT", BUY, price="30000", amount="0.1", time_in_force=4, expire_time_us=x.time_us)
    x.check_invariants()


def test_client_order_id_returns_the_original() -> None:
    x = funded()
    first = x.place(1, "BTC_USDT", BUY, price="30000", amount="0.1", client_order_id="abc-1")
    again = x.place(1, "BTC_USDT", BUY, price="30000", amount="0.1", client_order_id="abc-1")
    assert again.duplicate and again.order.order_id == first.order.order_id
    assert x.balance(1, "USDT")[1] == 3000 * USDT
    x.cancel(1, client_order_id="abc-1")
    assert x.balance(1, "USDT") == (100000 * USDT, 0)
    with pytest.raises(InvalidArgument) as info:
        x.place(1, "BTC_USDT", BUY, price="30000", amount="0.1", client_order_id="bad id!")
    assert info.value.reason == Reason.INVALID_FIELD


@pytest.mark.parametrize(
    ("kwargs", "error", "reason"),
    [
        ({"price": "30000.001", "amount": "0.1"}, InvalidArgument, Reason.PRICE_NOT_ON_TICK),
        ({"price": "30000", "amount": "0.000001"}, InvalidArgument, Reason.AMOUNT_NOT_ON_LOT),
        ({"price": "30000", "amount": "0.00001"}, InvalidArgument, Reason.BELOW_MIN_AMOUNT),  # min 0.0001
        ({"price": "1", "amount": "0.001"}, InvalidArgument, Reason.BELOW_MIN_NOTIONAL),  # min 5 USDT
        ({"price": "NaN", "amount": "0.1"}, InvalidArgument, Reason.INVALID_DECIMAL),
        ({"price": "-1", "amount": "0.1"}, InvalidArgument, Reason.INVALID_DECIMAL),
        ({"price": "1e4", "amount": "0.1"}, InvalidArgument, Reason.INVALID_DECIMAL),
        ({"price": "30000", "amount": "1000000"}, FailedPrecondition, Reason.INSUFFICIENT_BALANCE),
        ({"price": "30000", "amount": "0.1", "time_in_force": 9}, InvalidArgument, Reason.INVALID_ORDER),
        ({"price": "30000", "amount": "0.1", "expire_time_us": 5}, InvalidArgument, Reason.INVALID_ORDER),
        ({"price": "30000", "amount": "0.1", "quote_amount": "5"}, InvalidArgument, Reason.INVALID_ORDER),
        ({"amount": "0.1"}, InvalidArgument, Reason.INVALID_ORDER),  # limit without price
        (
            {"price": "30000", "amount": "0.1", "expire_time_us": -1},
            InvalidArgument,
            Reason.VALUE_OUT_OF_RANGE,
        ),
    ],
)
def test_bad_orders_change_nothing(kwargs: dict[str, object], error: type[Exception], reason: Reason) -> None:
    x = funded()
    before = x.accounts.state_hash()
    with pytest.raises(error) as info:
        x.place(1, "BTC_USDT", BUY, **kwargs)
    assert info.value.reason == reason  # type: ignore[attr-defined]
    assert x.accounts.state_hash() == before


def test_unknown_market_and_foreign_orders() -> None:
    x = funded()
    with pytest.raises(NotFound):
        x.place(1, "XRP_USDT", BUY, price="1", amount="10")
    o = x.place(2, "BTC_USDT", SELL, price="30000", amount="0.1").order
    with pytest.raises(NotFound):
        x.cancel(1, o.order_id)  # another user's order looks like no order at all
    with pytest.raises(NotFound):
        x.cancel(2, 999_999)
    x.cancel(2, o.order_id)
    with pytest.raises(FailedPrecondition):
        x.cancel(2, o.order_id)  # already canceled


def test_cancel_all_across_markets_and_shards() -> None:
    catalog = default_catalog(
        {"matching-0": ["BTC_USDT", "ETH_BTC"], "matching-1": ["ETH_USDT", "SOL_USDT", "DOGE_USDT"]}
    )
    x = MiniExchange(catalog=catalog)
    x.deposit(1, "USDT", "100000")
    x.place(1, "BTC_USDT", BUY, price="30000", amount="0.1")
    x.place(1, "ETH_USDT", BUY, price="2000", amount="1")
    x.place(1, "SOL_USDT", BUY, price="20", amount="10")
    assert x.cancel_all(1).order_count == 3
    assert x.balance(1, "USDT") == (100000 * USDT, 0)
    assert x.cancel_all(1).order_count == 0
    x.check_invariants()


# --- random flows ---------------------------------------------------------------------------------

ops = st.lists(
    st.tuples(
        st.sampled_from(
            [
                "limit",
                "limit",
                "limit",
                "market",
                "cancel",
                "move",
                "reduce",
                "cancel_all",
                "expire",
                "withdraw",
            ]
        ),
        st.integers(1, 4),  # user
        st.sampled_from([BUY, SELL]),
        st.integers(29_990, 30_010),  # price (USDT)
        st.integers(1, 50),  # amount in 0.001 BTC
        st.sampled_from([1, 2, 3, 4]),  # tif
        st.booleans(),  # post-only
        st.sampled_from([0, 1, 2, 3]),  # self-trade prevention
    ),
    max_size=60,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops)
def test_random_flows_keep_every_invariant_and_replay_to_the_same_state(flow: list[tuple]) -> None:  # type: ignore[type-arg]
    x = MiniExchange()
    for user in range(1, 5):
        x.deposit(user, "USDT", "200000")
        x.deposit(user, "BTC", "5")
    errors = (InvalidArgument, FailedPrecondition, NotFound, AlreadyExists)
    for kind, user, side, price, amount, tif, post_only, stp in flow:
        open_orders = sorted(x.accounts.ledger.iter_user_orders(user), key=lambda o: o.order_id)
        try:
            if kind == "limit":
                kw: dict[str, object] = {
                    "price": str(price),
                    "amount": f"{amount / 1000:.3f}",
                    "time_in_force": tif,
                    "post_only": post_only and tif in (1, 4),
                    "self_trade_prevention": stp,
                }
                if tif == 4:
                    kw["expire_time_us"] = x.time_us + 3_000_000
                x.place(user, "BTC_USDT", side, **kw)
            elif kind == "market":
                if side == BUY:
                    x.place(user, "BTC_USDT", BUY, type=MARKET, quote_amount=str(amount * 30))
                else:
                    x.place(user, "BTC_USDT", SELL, type=MARKET, amount=f"{amount / 1000:.3f}")
            elif kind == "cancel" and open_orders:
                x.cancel(user, open_orders[price % len(open_orders)].order_id)
            elif kind == "move" and open_orders:
                x.amend(
                    user, open_orders[price % len(open_orders)].order_id, new_price=str(price + side * 3 - 6)
                )
            elif kind == "reduce" and open_orders:
                o = open_orders[price % len(open_orders)]
                x.amend(user, o.order_id, new_amount=f"{max(1, o.amount - 100) / 100000:.5f}")
            elif kind == "cancel_all":
                x.cancel_all(user)
            elif kind == "expire":
                x.tick(2_000_000)
                x.expire()
            elif kind == "withdraw":
                x.withdraw(user, "USDT", str(amount))
        except errors:
            pass
        x.check_invariants()
    accounts, shards = replay(x.catalog, x)
    assert accounts.state_hash() == x.accounts.state_hash()
    for name, m in shards.items():
        assert m.state_hash() == x.shards[name].state_hash()

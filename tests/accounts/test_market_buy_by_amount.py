"""Accounts: a market buy by base amount within a quote budget (amount + quote_amount), end to end
through the accounts and matching state machines (in process).

Accounts freezes the budget (the most the order may spend: the fill price is unknown when it freezes),
each fill pays from it, and what is left comes back when the order is done -- the same path as a
budget-only market buy. Amount alone is refused: nothing to freeze."""

from __future__ import annotations

import pytest
from exchange.v1 import events_pb2 as ev

from services.common.errors import FailedPrecondition, InvalidArgument, Reason
from testkit.accounts_sim import MiniExchange

BUY, SELL = 1, 2
MARKET = 2
USDT = 10**8  # units per USDT
BTC = 10**8
FILLED, CANCELED = 4, 5  # ORDER_STATUS_*


def funded() -> MiniExchange:
    x = MiniExchange()
    x.deposit(1, "USDT", "100000")
    x.deposit(2, "BTC", "10")
    return x


def test_market_buy_by_amount_fills_the_amount_and_returns_the_unspent_budget() -> None:
    x = funded()
    x.place(2, "BTC_USDT", SELL, price="30000", amount="0.1")
    x.place(2, "BTC_USDT", SELL, price="31000", amount="0.5")
    o = x.place(1, "BTC_USDT", BUY, type=MARKET, amount="0.3", quote_amount="10000").order
    done = x.accounts.ledger.lookup(1, o.order_id)
    # 0.1 at 30000 (3000) + 0.2 at 31000 (6200): the amount is reached, 800 of the budget unspent.
    assert done.status == FILLED
    assert done.filled_quote == 9200 * USDT
    assert x.balance(1, "USDT") == ((100000 - 9200) * USDT, 0)  # nothing stays frozen
    assert x.balance(1, "BTC")[0] == int(0.3 * BTC) - done.fee
    assert x.balance(2, "BTC") == (int(9.4 * BTC), int(0.3 * BTC))  # 0.3 still resting at 31000
    x.check_invariants()


def test_market_buy_by_amount_stopped_by_its_budget_cancels_the_rest() -> None:
    x = funded()
    x.place(2, "BTC_USDT", SELL, price="30000", amount="0.1")
    x.place(2, "BTC_USDT", SELL, price="40000", amount="1")
    o = x.place(1, "BTC_USDT", BUY, type=MARKET, amount="0.5", quote_amount="3500").order
    done = x.accounts.ledger.lookup(1, o.order_id)
    # 0.1 at 30000 (3000); 500 left buys 0.0125 BTC at 40000 (lots of 0.00001): 3500 spent, 0.1125 of
    # 0.5 filled; the budget ends it and the rest is canceled.
    assert done.status == CANCELED
    assert done.filled == 11250  # lots
    assert done.filled_quote == 3500 * USDT
    assert x.balance(1, "USDT") == ((100000 - 3500) * USDT, 0)
    x.check_invariants()


def test_frozen_while_pending_is_the_budget() -> None:
    x = funded()
    x.auto_settle = False
    x.place(1, "BTC_USDT", BUY, type=MARKET, amount="0.1", quote_amount="5000")
    assert x.balance(1, "USDT") == (95000 * USDT, 5000 * USDT)
    x.settle()  # no liquidity: canceled, the whole budget comes back
    assert x.balance(1, "USDT") == (100000 * USDT, 0)
    x.check_invariants()


@pytest.mark.parametrize(
    ("kwargs", "error", "reason"),
    [
        ({"amount": "0.1"}, InvalidArgument, Reason.INVALID_ORDER),  # amount alone: nothing to freeze
        ({"amount": "0.00001", "quote_amount": "100"}, InvalidArgument, Reason.BELOW_MIN_AMOUNT),
        ({"amount": "0.1", "quote_amount": "1"}, InvalidArgument, Reason.BELOW_MIN_NOTIONAL),
        ({"amount": "0.1", "quote_amount": "200000"}, FailedPrecondition, Reason.INSUFFICIENT_BALANCE),
        ({"amount": "0.000001", "quote_amount": "100"}, InvalidArgument, Reason.AMOUNT_NOT_ON_LOT),
        ({"amount": "0.1", "quote_amount": "100", "price": "30000"}, InvalidArgument, Reason.INVALID_ORDER),
    ],
)
def test_bad_market_buys_by_amount_change_nothing(
    kwargs: dict[str, str], error: type[Exception], reason: Reason
) -> None:
    x = funded()
    before = x.accounts.state_hash()
    with pytest.raises(error) as info:
        x.place(1, "BTC_USDT", BUY, type=MARKET, **kwargs)
    assert info.value.reason == reason  # type: ignore[attr-defined]
    assert x.accounts.state_hash() == before


def test_the_ledger_refuses_amount_without_budget_past_the_edge() -> None:
    """A journaled command that skipped the edge parse is checked again by the state machine."""
    x = funded()
    before = x.accounts.state_hash()
    cmd = ev.AccountsCommand()
    o = cmd.place_order.order
    o.user_id, o.market, o.side, o.type = 1, "BTC_USDT", BUY, MARKET  # type: ignore[assignment]
    o.amount_lots = 10_000
    with pytest.raises(InvalidArgument) as info:
        x.apply_raw(cmd)
    assert info.value.reason == Reason.INVALID_ORDER
    assert "quote_amount" in str(info.value)
    assert x.accounts.state_hash() == before

"""A refused command changes nothing: not the balances, not the orders, not the state hash, not the
snapshot. (200k refused orders of never-seen users used to leave 200k zero balances behind: state that
no journal record explains, so a snapshot and a replay of the journal disagreed.)"""

from __future__ import annotations

from typing import Any

import pytest
from exchange.v1 import events_pb2 as ev
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.accounts.machine import reservation_for
from services.common.errors import ExchangeError
from testkit.accounts_sim import MiniExchange, replay

BUY, SELL = 1, 2
NEW_USER = 77  # never deposited anything
SUB = 2**62  # sub-account ids are SUB + n


def funded() -> MiniExchange:
    x = MiniExchange()
    x.deposit(1, "USDT", "100000")
    x.deposit(2, "BTC", "10")
    x.place(2, "BTC_USDT", SELL, price="30000", amount="1")  # order 1, resting
    return x


def _place(user: int, market: str, side: int, price: int, amount: int, **kw: Any) -> ev.AccountsCommand:
    cmd = ev.AccountsCommand()
    o = cmd.place_order.order
    o.user_id, o.market, o.side, o.type, o.price_ticks, o.amount_lots = user, market, side, 1, price, amount
    for k, v in kw.items():
        setattr(o, k, v)
    return cmd


def _refused_commands() -> list[ev.AccountsCommand]:
    withdraw = ev.AccountsCommand()
    withdraw.adjust_balance.CopyFrom(
        ev.BalanceAdjustCommand(user_id=NEW_USER, asset="USDT", change=-5, business="w", business_id="1")
    )
    cancel = ev.AccountsCommand()
    cancel.cancel_order.CopyFrom(ev.CancelOrderCommand(user_id=NEW_USER, order_id=1))
    cancel_all = ev.AccountsCommand()
    cancel_all.cancel_all_orders.CopyFrom(ev.CancelAllOrdersCommand(user_id=NEW_USER))
    amend = ev.AccountsCommand()
    amend.amend_order.CopyFrom(ev.AmendOrderCommand(user_id=NEW_USER, order_id=1, new_price_ticks=100))
    both = ev.AccountsCommand()
    both.amend_order.CopyFrom(
        ev.AmendOrderCommand(user_id=NEW_USER, client_order_id="x", new_price_ticks=1, new_amount_lots=1)
    )
    move = ev.AccountsCommand()
    move.move_order.CopyFrom(ev.MoveOrderCommand(user_id=NEW_USER, order_id=1, new_price_ticks=5))
    reduce = ev.AccountsCommand()
    reduce.reduce_order.CopyFrom(ev.ReduceOrderCommand(user_id=NEW_USER, order_id=1, new_amount_lots=5))
    transfers = []
    for src, dst, amount in ((NEW_USER, SUB + 1, 5), (1, 2, 5), (1, SUB + 1, 5), (1, 1, 5), (SUB + 1, 1, 5)):
        t = ev.AccountsCommand()
        t.transfer.CopyFrom(
            ev.TransferCommand(from_user_id=src, to_user_id=dst, asset="USDT", amount=amount, transfer_id="t")
        )
        transfers.append(t)
    opens = []
    for owner, label in ((SUB + 5, "a"), (0, "a"), (NEW_USER, ""), (NEW_USER, "x" * 65), (2**63, "a")):
        o = ev.AccountsCommand()
        o.open_sub_account.CopyFrom(ev.OpenSubAccountCommand(owner_user_id=owner, label=label))
        opens.append(o)
    return [
        *transfers,
        *opens,
        withdraw,
        _place(NEW_USER, "BTC_USDT", BUY, 3_000_000, 10_000),  # unaffordable: no USDT at all
        _place(NEW_USER, "BTC_USDT", SELL, 3_000_000, 10_000),  # no BTC
        _place(1, "BTC_USDT", SELL, 3_000_000, 10_000),  # user 1 has USDT, but no BTC
        _place(2**63, "BTC_USDT", BUY, 1, 1),  # user id beyond int64
        cancel,
        cancel_all,
        amend,
        both,
        reservation_for(both),
        move,
        reduce,
    ]


@pytest.mark.parametrize("index", range(len(_refused_commands())))
def test_a_refused_command_of_an_unknown_user_leaves_no_trace(index: int) -> None:
    x = funded()
    cmd = _refused_commands()[index]
    before = (x.accounts.state_hash(), x.accounts.snapshot(), x.accounts.applied_seq)
    try:
        out = x.accounts.apply(x.accounts.applied_seq + 1, x.time_us, cmd)
        assert not out.journal
    except ExchangeError:
        pass
    assert (x.accounts.state_hash(), x.accounts.snapshot(), x.accounts.applied_seq) == before
    led = x.accounts.ledger
    assert NEW_USER not in led.balances and "BTC" not in led.balances[1]


# --- random commands straight into the machine ---------------------------------------------------

# Mostly plausible values (so orders get placed, amended and filled), often wild ones.
WILD_U64 = st.sampled_from([0, NEW_USER, SUB, SUB + 1, SUB + 2, SUB + 3, 2**63 - 1, 2**63, 2**64 - 1])
OWNER = 1000  # replaced by the owner of the order the command names, when there is one
U64 = st.one_of(st.sampled_from([1, 2, 3]), st.sampled_from([1, 2, 3]), WILD_U64)
ORDER_USER = st.one_of(st.just(OWNER), st.just(OWNER), U64)
WILD_I64 = st.sampled_from([0, 1, -1, 10, 10**9, 10**15, 2**62, 2**63 - 1, -(2**63)])
PRICES = st.one_of(st.integers(2_999_000, 3_001_000), st.integers(2_999_000, 3_001_000), WILD_I64)
AMOUNTS = st.one_of(st.integers(5, 50_000), st.integers(5, 50_000), WILD_I64)
I64 = st.one_of(st.integers(-(10**6), 10**7), WILD_I64)
ORDER_IDS = st.one_of(
    st.integers(1, 4), st.integers(1, 8), st.integers(0, 30), st.sampled_from([2**63 - 1, 2**64 - 1])
)
MARKETS = st.sampled_from(["BTC_USDT", "BTC_USDT", "BTC_USDT", "ETH_USDT", "NOPE_USDT", ""])
CLIENT_IDS = st.sampled_from(["", "", "", "c1", "c2", "bad id!"])
SMALL_ENUM = st.one_of(st.integers(1, 2), st.integers(1, 2), st.integers(0, 5))


@st.composite
def commands(draw: st.DrawFn) -> list[ev.AccountsCommand]:
    """One command, or an amend's reservation and the amend itself."""
    cmd = ev.AccountsCommand()
    kind = draw(
        st.sampled_from(
            [
                "adjust",
                "place",
                "place",
                "place",
                "place",
                "cancel",
                "cancel_all",
                "amend",
                "amend",
                "amend",
                "old",
                "settle",
                "open_sub_account",
                "transfer",
                "transfer",
            ]
        )
    )
    if kind == "adjust":
        cmd.adjust_balance.CopyFrom(
            ev.BalanceAdjustCommand(
                user_id=draw(U64),
                asset=draw(st.sampled_from(["USDT", "BTC", "ETH", "XYZ", ""])),
                change=draw(st.one_of(st.integers(-(10**13), 10**13), I64)),
                business=draw(st.sampled_from(["d", "w", "", "bad!"])),
                business_id=draw(st.sampled_from(["1", "2", "3", ""])),
            )
        )
    elif kind == "place" and draw(st.integers(0, 3)):  # a plausible limit order (may be unaffordable)
        cmd.place_order.client_order_id = draw(CLIENT_IDS)
        cmd.place_order.order.CopyFrom(
            ev.PlaceOrderCommand(
                user_id=draw(st.sampled_from([1, 2, 3, SUB + 1, SUB + 2])),
                market="BTC_USDT",
                side=draw(st.integers(1, 2)),  # type: ignore[arg-type]
                type=1,  # type: ignore[arg-type]
                time_in_force=draw(st.sampled_from([0, 0, 2])),  # type: ignore[arg-type]
                price_ticks=draw(st.integers(2_998_000, 3_002_000)),
                amount_lots=draw(st.integers(5, 50_000)),
            )
        )
    elif kind == "place":
        cmd.place_order.client_order_id = draw(CLIENT_IDS)
        cmd.place_order.order.CopyFrom(
            ev.PlaceOrderCommand(
                user_id=draw(U64),
                market=draw(MARKETS),
                side=draw(SMALL_ENUM),  # type: ignore[arg-type]
                type=draw(st.one_of(st.just(1), SMALL_ENUM)),  # type: ignore[arg-type]
                time_in_force=draw(st.one_of(st.just(0), SMALL_ENUM)),  # type: ignore[arg-type]
                post_only=draw(st.booleans()),
                self_trade_prevention=draw(st.one_of(st.just(0), st.integers(0, 4))),  # type: ignore[arg-type]
                price_ticks=draw(PRICES),
                amount_lots=draw(AMOUNTS),
                quote_budget=draw(st.one_of(st.just(0), st.just(0), I64)),
                expire_time_us=draw(st.one_of(st.just(0), st.just(0), I64)),
            )
        )
    elif kind == "open_sub_account":
        cmd.open_sub_account.CopyFrom(
            ev.OpenSubAccountCommand(
                owner_user_id=draw(U64), label=draw(st.sampled_from(["s", "s", "t", "", "x" * 65, "a\nb"]))
            )
        )
    elif kind == "transfer":
        cmd.transfer.CopyFrom(
            ev.TransferCommand(
                from_user_id=draw(st.one_of(st.sampled_from([1, 3, SUB + 1, SUB + 2]), U64)),
                to_user_id=draw(st.one_of(st.sampled_from([1, 3, SUB + 1, SUB + 2]), U64)),
                asset=draw(st.sampled_from(["USDT", "BTC", "XYZ", ""])),
                amount=draw(st.one_of(st.integers(-10, 10**12), I64)),
                transfer_id=draw(st.sampled_from(["t1", "t2", "t3", "", "bad id"])),
            )
        )
    elif kind == "cancel":
        cmd.cancel_order.CopyFrom(
            ev.CancelOrderCommand(
                user_id=draw(ORDER_USER),
                order_id=draw(ORDER_IDS),
                client_order_id=draw(CLIENT_IDS),
                market=draw(st.sampled_from(["", "BTC_USDT", "ETH_USDT"])),
            )
        )
    elif kind == "cancel_all":
        cmd.cancel_all_orders.CopyFrom(
            ev.CancelAllOrdersCommand(
                user_id=draw(U64),
                market=draw(MARKETS),
                side=draw(st.integers(0, 4)),  # type: ignore[arg-type]
            )
        )
    elif kind == "amend":
        cmd.amend_order.CopyFrom(
            ev.AmendOrderCommand(
                user_id=draw(ORDER_USER),
                order_id=draw(ORDER_IDS),
                client_order_id=draw(st.one_of(st.just(""), CLIENT_IDS)),
                market=draw(st.sampled_from(["", "", "BTC_USDT", "ETH_USDT"])),
                new_price_ticks=draw(st.one_of(st.just(0), PRICES)),
                new_amount_lots=draw(st.one_of(st.just(0), AMOUNTS)),
            )
        )
        how = draw(st.sampled_from(["alone", "reservation", "pair", "pair"]))
        if how == "reservation":
            cmd = reservation_for(cmd)
        elif how == "pair":
            return [reservation_for(cmd), cmd]
    elif kind == "old":
        if draw(st.booleans()):
            cmd.reduce_order.CopyFrom(
                ev.ReduceOrderCommand(
                    user_id=draw(ORDER_USER), order_id=draw(ORDER_IDS), new_amount_lots=draw(AMOUNTS)
                )
            )
        else:
            cmd.move_order.CopyFrom(
                ev.MoveOrderCommand(
                    user_id=draw(ORDER_USER), order_id=draw(ORDER_IDS), new_price_ticks=draw(PRICES)
                )
            )
    else:
        # Events of a shard that owns nothing (so the real shard's events still settle): mostly
        # orders accounts does not know, stale resends and gaps.
        cmd.settle.shard = "matching-9"
        first = draw(st.sampled_from(["next", "next", "stale", "gap"]))
        for i in range(draw(st.integers(0, 3))):
            e = cmd.settle.events.add(source="matching-9", market=draw(MARKETS))
            e.sequence = {"next": 0, "stale": -1, "gap": 5}[first] + i + 1  # offset from settled
            which = draw(st.sampled_from(["trade", "done", "accepted", "amended", "rejected"]))
            oid = draw(ORDER_IDS)
            if which == "trade":
                lots = draw(st.integers(-1, 20))
                e.trade_executed.CopyFrom(
                    ev.TradeExecuted(
                        trade_id=1,
                        price_ticks=3_000_000,
                        amount_lots=lots,
                        quote_units=3_000_000 * lots * 10,
                        base_units=lots * 1000,
                        taker_side=draw(st.integers(0, 2)),  # type: ignore[arg-type]
                        taker_order_id=oid,
                        taker_user_id=draw(U64),
                        maker_order_id=draw(ORDER_IDS),
                        maker_user_id=draw(U64),
                        taker_fee=draw(st.integers(-1, 10)),
                    )
                )
            elif which == "done":
                e.order_done.CopyFrom(
                    ev.OrderDone(order_id=oid, user_id=draw(U64), reason=draw(st.integers(0, 5)))  # type: ignore[arg-type]
                )
            elif which == "accepted":
                e.order_accepted.order.CopyFrom(ev.PlaceOrderCommand(order_id=oid, user_id=draw(U64)))
            elif which == "amended":
                e.order_amended.CopyFrom(
                    ev.OrderAmended(
                        order_id=oid,
                        user_id=draw(U64),
                        price_ticks=draw(PRICES),
                        amount_lots=draw(AMOUNTS),
                        remaining_lots=draw(AMOUNTS),
                        priority_kept=draw(st.booleans()),
                    )
                )
            else:
                e.command_rejected.CopyFrom(ev.CommandRejected(order_id=oid))
    return [cmd]


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(commands(), min_size=5, max_size=40))
def test_random_commands_refused_change_nothing_and_the_invariant_holds(
    flow: list[list[ev.AccountsCommand]],
) -> None:
    x = MiniExchange(auto_settle=False)
    for user, asset, amount in (
        (1, "USDT", "100000"),
        (1, "BTC", "1"),
        (2, "BTC", "10"),
        (3, "USDT", "20000"),
        (3, "BTC", "0.1"),
    ):
        x.deposit(user, asset, amount)
    x.place(1, "BTC_USDT", BUY, price="29990", amount="0.1")  # orders 1-3 rest in the book
    x.place(2, "BTC_USDT", SELL, price="30010", amount="0.2")
    x.place(3, "BTC_USDT", BUY, price="29995", amount="0.05", client_order_id="c1")
    x.settle()
    x.open_sub_account(1, "s")  # SUB + 1
    x.open_sub_account(3, "s")  # SUB + 2
    x.transfer(1, SUB + 1, "USDT", "5000")
    x.transfer(3, SUB + 2, "BTC", "0.05")
    led = x.accounts.ledger
    for cmd in (c for group in flow for c in group):
        x.tick()
        kind = cmd.WhichOneof("command")
        if kind == "settle":
            last = led.settled.get("matching-9", 0)
            for e in cmd.settle.events:
                e.sequence = max(1, e.sequence + last)
        elif kind in ("cancel_order", "amend_order", "reduce_order", "move_order"):
            body = getattr(cmd, kind)
            if body.user_id == OWNER:
                known = led.orders.get(body.order_id) or led.finished.get(body.order_id)
                body.user_id = known.user_id if known is not None else NEW_USER
        before = (x.accounts.state_hash(), x.accounts.snapshot())
        try:
            out = x.apply_raw(cmd)
            refused = not out.journal
        except ExchangeError:
            refused = True
        if refused:
            assert (x.accounts.state_hash(), x.accounts.snapshot()) == before
        x.settle()
        for asset, a in x.accounts.ledger.audit().items():
            assert a["total"] == a["external"], (asset, a)
            assert a["frozen"] == a["held"], (asset, a)
    accounts, _ = replay(x.catalog, x)
    assert accounts.state_hash() == x.accounts.state_hash()

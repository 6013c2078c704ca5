"""AmendOrder is one all-or-nothing command: checked completely before anything changes, then
forwarded to the shard as a reduce and/or a move (an amend of both takes a sequence reservation)."""

from __future__ import annotations

import pytest
from exchange.v1 import accounts_service_pb2 as apb
from exchange.v1 import events_pb2 as ev

from services.accounts.convert import is_reservation
from services.accounts.machine import AccountsMachine, outbox_commands
from services.accounts.views import amend_commands
from services.common.errors import FailedPrecondition, InvalidArgument, NotFound, Reason
from testkit.accounts_sim import MiniExchange, default_catalog, replay

BUY, SELL = 1, 2
USDT = 10**8


def book(x: MiniExchange, order_id: int) -> tuple[int, int] | None:
    """(price ticks, remaining lots) of an order in matching's book."""
    for b in x.shards["matching-0"].engine.books.values():
        o = b.orders.get(order_id)
        if o is not None:
            return o.price, o.remaining
    return None


def test_amount_and_unaffordable_price_change_nothing() -> None:
    """The reported defect: a valid new amount with an unaffordable new price reduced the order from
    0.5 to 0.4 and then answered FAILED_PRECONDITION."""
    x = MiniExchange()
    x.deposit(1, "USDT", "20000")
    o = x.place(1, "BTC_USDT", BUY, price="30000", amount="0.5").order
    before = (x.accounts.state_hash(), len(x.accounts_journal), book(x, o.order_id))
    with pytest.raises(FailedPrecondition) as info:
        x.amend(1, o.order_id, new_price="50000", new_amount="0.4")  # 0.5 x 50000 = 25000 > 20000
    assert info.value.reason == Reason.INSUFFICIENT_BALANCE
    assert "USDT" in info.value.message and "needed 10000 USDT more" in info.value.message
    assert (x.accounts.state_hash(), len(x.accounts_journal), book(x, o.order_id)) == before
    assert book(x, o.order_id) == (3_000_000, 50_000)  # still 0.5 at 30000
    assert x.accounts.ledger.lookup(1, o.order_id).amount == 50_000
    x.check_invariants()


def test_amend_of_price_and_amount_reduces_then_moves() -> None:
    x = MiniExchange()
    x.deposit(1, "USDT", "30000")
    x.deposit(2, "BTC", "1")
    x.place(2, "BTC_USDT", SELL, price="31000", amount="0.1")
    o = x.place(1, "BTC_USDT", BUY, price="30000", amount="0.5").order
    journal = len(x.accounts_journal)
    x.amend(1, o.order_id, new_price="32000", new_amount="0.4")
    # Reservation + amend journaled; matching got a reduce (keeps priority) and then the move.
    assert len(x.accounts_journal) == journal + 2 + 1  # + the settlement of the shard's events
    reservation, amend = (ev.AccountsCommand.FromString(r) for r in x.accounts_journal[journal : journal + 2])
    assert is_reservation(reservation) and not is_reservation(amend)
    sent = [ev.MatchingCommand.FromString(b) for b in x.forwarded["matching-0"][-2:]]
    assert [c.WhichOneof("command") for c in sent] == ["reduce_order", "move_order"]
    assert [c.source_sequence for c in sent] == [journal + 1, journal + 2]
    assert sent[1].previous_sequence == sent[0].source_sequence
    # The move up took 0.1 at 31000 (the ask) and rests 0.3 at 32000; what it holds is exact.
    led = x.accounts.ledger
    order = led.lookup(1, o.order_id)
    assert (order.amount, order.filled, order.price) == (40_000, 10_000, 3_200_000)
    assert book(x, o.order_id) == (3_200_000, 30_000)
    assert x.balance(1, "USDT") == ((30000 - 3100 - 9600) * USDT, 9600 * USDT)
    x.check_invariants()
    accounts, shards = replay(x.catalog, x)
    assert accounts.state_hash() == x.accounts.state_hash()
    assert shards["matching-0"].state_hash() == x.shards["matching-0"].state_hash()


def test_amend_alone_forwards_one_command() -> None:
    x = MiniExchange()
    x.deposit(2, "BTC", "1")
    o = x.place(2, "BTC_USDT", SELL, price="31000", amount="0.5").order
    journal = len(x.accounts_journal)
    x.amend(2, o.order_id, new_amount="0.2")
    assert ev.AccountsCommand.FromString(x.accounts_journal[journal]).WhichOneof("command") == "amend_order"
    assert book(x, o.order_id) == (3_100_000, 20_000)
    assert x.balance(2, "BTC") == (80_000_000, 20_000_000)
    x.amend(2, o.order_id, new_price="30500")
    assert book(x, o.order_id) == (3_050_000, 20_000)
    x.check_invariants()


@pytest.mark.parametrize(
    ("new_price", "new_amount", "error", "reason"),
    [
        ("30000", "0.6", FailedPrecondition, Reason.ORDER_NOT_AMENDABLE),  # amount only goes down
        ("30000", "0.5", FailedPrecondition, Reason.ORDER_NOT_AMENDABLE),
        ("30000.001", "0.4", InvalidArgument, Reason.PRICE_NOT_ON_TICK),
        ("30000", "0.4000001", InvalidArgument, Reason.AMOUNT_NOT_ON_LOT),
        ("NaN", "0.4", InvalidArgument, Reason.INVALID_DECIMAL),
        ("90000", "", FailedPrecondition, Reason.INSUFFICIENT_BALANCE),
    ],
)
def test_a_refused_amend_changes_nothing(
    new_price: str, new_amount: str, error: type, reason: Reason
) -> None:
    x = MiniExchange()
    x.deposit(1, "USDT", "20000")
    o = x.place(1, "BTC_USDT", BUY, price="30000", amount="0.5").order
    before = (x.accounts.state_hash(), len(x.accounts_journal), book(x, o.order_id))
    with pytest.raises(error) as info:
        x.amend(1, o.order_id, new_price=new_price, new_amount=new_amount)
    assert info.value.reason == reason
    assert (x.accounts.state_hash(), len(x.accounts_journal), book(x, o.order_id)) == before


def test_market_orders_and_done_orders_are_not_amendable() -> None:
    x = MiniExchange(auto_settle=False)
    x.deposit(1, "USDT", "20000")
    m = x.place(1, "BTC_USDT", BUY, type=2, quote_amount="100").order  # pending: not settled yet
    with pytest.raises(FailedPrecondition) as info:
        x.amend(1, m.order_id, new_price="1")
    assert info.value.reason == Reason.ORDER_NOT_AMENDABLE
    x.settle()  # no liquidity: canceled
    with pytest.raises(FailedPrecondition) as info:
        x.amend(1, m.order_id, new_price="1")
    assert info.value.reason == Reason.ORDER_ALREADY_DONE
    with pytest.raises(NotFound) as nf:
        x.amend(2, m.order_id, new_price="1")  # not the owner
    assert nf.value.reason == Reason.ORDER_NOT_FOUND


def test_an_amend_of_both_without_its_reservation_is_refused() -> None:
    """The reduce is forwarded under the number before the amend's; if the command before forwarded
    to the same shard, that number is taken and the amend is refused (changing nothing)."""
    x = MiniExchange()
    x.deposit(1, "USDT", "20000")
    o = x.place(1, "BTC_USDT", BUY, price="30000", amount="0.5").order
    x.auto_settle = False
    x.place(1, "BTC_USDT", BUY, price="1000", amount="0.01")  # forwards to matching-0 just before
    reservation, amend = amend_commands(
        apb.AmendOrderRequest(user_id=1, order_id=o.order_id, new_price="29000", new_amount="0.4"),
        x.catalog,
        "BTC_USDT",
    )
    before = x.accounts.state_hash()
    with pytest.raises(FailedPrecondition) as info:
        x.apply_raw(amend)
    assert info.value.reason == Reason.INTERNAL
    assert x.accounts.state_hash() == before
    x.apply_raw(reservation)
    x.apply_raw(amend)
    x.settle()
    assert book(x, o.order_id) == (2_900_000, 40_000)
    x.check_invariants()


def test_a_crash_after_the_reservation_leaves_only_the_reservation() -> None:
    x = MiniExchange()
    x.deposit(1, "USDT", "20000")
    o = x.place(1, "BTC_USDT", BUY, price="30000", amount="0.5").order
    reservation, _ = amend_commands(
        apb.AmendOrderRequest(user_id=1, order_id=o.order_id, new_price="29000", new_amount="0.4"),
        x.catalog,
        "BTC_USDT",
    )
    before_ledger = repr(x.accounts.ledger.snapshot())
    out = x.apply_raw(reservation)
    assert out.journal and not out.events and not out.effects
    assert repr(x.accounts.ledger.snapshot()) == before_ledger  # only the sequence moved
    accounts, _ = replay(x.catalog, x)  # the journal ends with the reservation
    assert accounts.state_hash() == x.accounts.state_hash()
    x.check_invariants()


def test_journaled_reduce_and_move_commands_still_replay() -> None:
    """Journals written before one-command amends hold reduce_order and move_order."""
    catalog = default_catalog()
    m = AccountsMachine.restore(catalog, "accounts-0", None)
    deposit = ev.AccountsCommand()
    deposit.adjust_balance.CopyFrom(
        ev.BalanceAdjustCommand(user_id=1, asset="USDT", change=20000 * USDT, business="d", business_id="1")
    )
    place = ev.AccountsCommand()
    place.place_order.order.CopyFrom(
        ev.PlaceOrderCommand(
            user_id=1, market="BTC_USDT", side=1, type=1, price_ticks=3_000_000, amount_lots=50_000
        )  # type: ignore[arg-type]
    )
    reduce = ev.AccountsCommand()
    reduce.reduce_order.CopyFrom(ev.ReduceOrderCommand(user_id=1, order_id=1, new_amount_lots=40_000))
    move = ev.AccountsCommand()
    move.move_order.CopyFrom(ev.MoveOrderCommand(user_id=1, order_id=1, new_price_ticks=3_500_000))
    journal = []
    for seq, cmd in enumerate((deposit, place, reduce, move), 1):
        out = m.apply(seq, 1000 + seq, cmd)
        assert out.journal
        cmd.time_us = 1000 + seq  # what the host journals
        journal.append(cmd.SerializeToString())
        if seq >= 3:
            ((fseq, shard, payload),) = outbox_commands("accounts-0", seq, cmd, catalog)
            mc = ev.MatchingCommand.FromString(payload)
            assert (fseq, shard, mc.previous_sequence) == (seq, "matching-0", seq - 1)
    # The move up froze 0.5 x 5000 more (the reduce is not confirmed yet).
    assert m.ledger.peek_balance(1, "USDT") == (2500 * USDT, 17500 * USDT)
    again = AccountsMachine.restore(catalog, "accounts-0", None)
    for seq, rec in enumerate(journal, 1):
        cmd = ev.AccountsCommand.FromString(rec)
        assert again.apply(seq, cmd.time_us, cmd).journal
    assert again.state_hash() == m.state_hash()

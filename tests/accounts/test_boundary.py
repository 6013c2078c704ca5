"""The accounts domain's boundary with protobuf: the order lifecycle table the ledger follows, the
AccountEvent records and order acknowledgements written field by field (zero values left out) equal
to the messages protobuf builds from every field, one Order message for accounts and history, and
the journal codecs of both machines."""

from __future__ import annotations

import itertools

import pytest
from exchange.v1 import events_pb2 as ev
from exchange.v1 import types_pb2
from hypothesis import given, settings
from hypothesis import strategies as st

from services.accounts import lifecycle
from services.accounts.convert import EventSink, fill_order_state
from services.accounts.ledger import AccountOrder
from services.accounts.lifecycle import ACCEPTED, DONE_EVENTS, FILL, InvalidTransition, transition
from services.accounts.machine import CODEC as ACCOUNTS_CODEC
from services.accounts.model import Accepted, Done, Trade
from services.accounts.views import fill_order_ack, order_message
from services.common.enums import (
    CANCELED,
    DONE_CANCELED,
    DONE_EXPIRED,
    DONE_FILLED,
    DONE_REJECTED,
    EXPIRED,
    FILLED,
    OPEN,
    PARTIALLY_FILLED,
    PENDING,
    REJECTED,
)
from services.common.orders import OrderView
from services.common.orders import order_message as api_order_message
from services.history.queries import OrderRecord
from services.matching.machine import CODEC as MATCHING_CODEC
from testkit.accounts_sim import MiniExchange, default_catalog

BUY, SELL = 1, 2
STATUSES = (PENDING, OPEN, PARTIALLY_FILLED, FILLED, CANCELED, EXPIRED, REJECTED)
EVENTS = (ACCEPTED, FILL, *DONE_EVENTS.values())

# --- the order lifecycle ----------------------------------------------------------------------------

EXPECTED = {
    (PENDING, ACCEPTED): OPEN,
    (OPEN, ACCEPTED): OPEN,
    (PARTIALLY_FILLED, ACCEPTED): PARTIALLY_FILLED,
    (PENDING, FILL): PARTIALLY_FILLED,
    (OPEN, FILL): PARTIALLY_FILLED,
    (PARTIALLY_FILLED, FILL): PARTIALLY_FILLED,
    **{
        (status, DONE_EVENTS[reason]): final
        for status in (PENDING, OPEN, PARTIALLY_FILLED)
        for reason, final in (
            (DONE_FILLED, FILLED),
            (DONE_CANCELED, CANCELED),
            (DONE_EXPIRED, EXPIRED),
            (DONE_REJECTED, REJECTED),
        )
    },
}


@pytest.mark.parametrize(("status", "event"), list(itertools.product(STATUSES, EVENTS)))
def test_the_lifecycle_table_allows_exactly_the_transitions_of_an_order(status: int, event: str) -> None:
    if (status, event) in EXPECTED:
        assert transition(status, event) == EXPECTED[(status, event)]
    else:
        with pytest.raises(InvalidTransition):
            transition(status, event)


def test_final_statuses_have_no_way_out_and_an_order_starts_pending() -> None:
    assert lifecycle.TRANSITIONS == EXPECTED
    assert {s for s, _ in lifecycle.TRANSITIONS} == {PENDING, OPEN, PARTIALLY_FILLED}
    assert lifecycle.INITIAL == PENDING


def _open_order(x: MiniExchange) -> AccountOrder:
    x.deposit(1, "USDT", "100000")
    o = x.place(1, "BTC_USDT", BUY, price="30000", amount="0.5").order
    return x.accounts.ledger.orders[o.order_id]


@pytest.mark.parametrize("final", [FILLED, CANCELED, EXPIRED, REJECTED])
def test_the_ledger_refuses_a_transition_its_table_does_not_have(final: int) -> None:
    """Settlement checks every event first, so only a ledger in a state it cannot reach (a final
    order still open) gets this far: the ledger stops (fail-stop) instead of reviving the order."""
    x = MiniExchange()
    o = _open_order(x)
    led, sink = x.accounts.ledger, EventSink("accounts-0", 1, 5)
    # An unknown done reason is not a transition: the event is quarantined before it gets there.
    assert led.done_problem(Done(1, "BTC_USDT", 5, o.order_id, 1, 99, 0)) == "unknown done reason 99"
    o.status = final
    before = led.snapshot()
    with pytest.raises(InvalidTransition):
        led.on_accepted(Accepted(1, "BTC_USDT", 5, o.order_id, 1), {})
    with pytest.raises(InvalidTransition):
        led.on_done(Done(1, "BTC_USDT", 5, o.order_id, 1, DONE_CANCELED, 1), sink, {})
    assert led.snapshot()["orders"] == before["orders"] and sink.records == []


def test_settlement_walks_the_table() -> None:
    x = MiniExchange()
    x.deposit(1, "USDT", "100000")
    x.deposit(2, "BTC", "1")
    buy = x.place(1, "BTC_USDT", BUY, price="30000", amount="0.5").order
    assert buy.status == OPEN  # PENDING --accepted--> OPEN
    x.place(2, "BTC_USDT", SELL, price="30000", amount="0.2")
    assert x.accounts.ledger.lookup(1, buy.order_id).status == PARTIALLY_FILLED  # --fill-->
    x.place(2, "BTC_USDT", SELL, price="30000", amount="0.3")
    assert x.accounts.ledger.lookup(1, buy.order_id).status == FILLED  # --fill--> --done (filled)-->


# --- records written field by field are protobuf's messages ------------------------------------------

I64 = st.integers(-(2**63), 2**63 - 1)
SMALL = st.one_of(st.just(0), st.integers(1, 10**12))
TEXT = st.text(alphabet="abcXYZ0-_.", max_size=10)


@st.composite
def account_orders(draw: st.DrawFn) -> AccountOrder:
    o = AccountOrder(
        order_id=draw(st.integers(1, 2**63 - 1)),
        user_id=draw(st.integers(0, 2**63 - 1)),
        market=draw(st.sampled_from(["BTC_USDT", "ETH_USDT"])),
        side=draw(st.integers(1, 2)),
        type=draw(st.integers(1, 2)),
        tif=draw(st.integers(0, 4)),
        post_only=draw(st.booleans()),
        stp=draw(st.integers(0, 3)),
        price=draw(SMALL),
        amount=draw(SMALL),
        quote_budget=draw(SMALL),
        status=draw(st.sampled_from(STATUSES)),
        client_order_id=draw(st.one_of(st.just(""), TEXT)),
        created=draw(SMALL),
        updated=draw(SMALL),
        expire_at=draw(SMALL),
        maker_fee=draw(st.integers(0, 10_000)),
        taker_fee=draw(st.integers(0, 10_000)),
    )
    o.filled = draw(st.integers(0, o.amount)) if o.amount else 0
    o.filled_quote = draw(SMALL)
    o.fee = draw(SMALL)
    o.detail = draw(st.integers(0, 12))
    return o


def _full_state(o: AccountOrder) -> ev.OrderState:
    """Every field of OrderState set, from the order's view (the API's names)."""
    view = o.view()
    return ev.OrderState(**{f.name: getattr(view, f.name) for f in ev.OrderState.DESCRIPTOR.fields})


ACK_FIELDS = ("order_id", "client_order_id", "user_id", "market", "side", "type", "status", "created_time_us")


@settings(max_examples=200, deadline=None)
@given(account_orders())
def test_order_state_and_ack_are_the_messages_of_every_field(o: AccountOrder) -> None:
    s = ev.OrderState()
    fill_order_state(s, o)
    assert s.SerializeToString() == _full_state(o).SerializeToString()
    ack = types_pb2.Order()
    fill_order_ack(ack, o)
    view = o.view()
    full = types_pb2.Order(**{name: getattr(view, name) for name in ACK_FIELDS})
    assert ack.SerializeToString() == full.SerializeToString()


@settings(max_examples=200, deadline=None)
@given(
    account_orders(),
    st.integers(0, 2**63 - 1),
    st.integers(1, 2**63 - 1),
    st.integers(0, 2**63 - 1),
    st.tuples(I64, I64, I64, I64),
    st.sampled_from(["", "accounts-0", "accounts-" + "7" * 150]),
)
def test_event_records_are_the_messages_of_every_field(
    o: AccountOrder, user: int, seq: int, time_us: int, numbers: tuple[int, int, int, int], source: str
) -> None:
    d_avail, d_frozen, avail, frozen = numbers
    sink = EventSink(source, seq, time_us)
    sink.balance(user, "USDT", 4, "BTC_USDT#7", d_avail, d_frozen, [avail, frozen])
    sink.order(o)
    trade = Trade(1, "ETH_USDT", time_us, 9, 3, 4, 12, 40, BUY, 1, 2, 3, 4, 5, 6)
    sink.fill(user, trade, 3, SELL, 1, 6, "USDT")
    envelope = {"source": source, "time_us": time_us}
    expected = [
        ev.AccountEvent(
            **envelope,
            sequence=seq,
            user_id=user,
            balance_changed=ev.BalanceChanged(
                asset="USDT",
                business=4,  # type: ignore[arg-type]
                business_id="BTC_USDT#7",
                available_delta=d_avail,
                frozen_delta=d_frozen,
                available=avail,
                frozen=frozen,
            ),
        ),
        ev.AccountEvent(**envelope, sequence=seq + 1, user_id=o.user_id, order_updated=_full_state(o)),
        ev.AccountEvent(
            **envelope,
            sequence=seq + 2,
            user_id=user,
            user_fill=ev.UserFill(
                trade_id=9,
                market="ETH_USDT",
                order_id=3,
                side=SELL,  # type: ignore[arg-type]
                role=1,  # type: ignore[arg-type]
                price_ticks=3,
                amount_lots=4,
                quote_units=12,
                fee_units=6,
                fee_asset="USDT",
            ),
        ),
    ]
    assert sink.records == [e.SerializeToString() for e in expected]
    assert sink.users == [user, o.user_id, user] and sink.next_seq == seq + 3


# --- one Order message for accounts and history ----------------------------------------------------


@settings(max_examples=100, deadline=None)
@given(account_orders(), st.integers(0, 2**40))
def test_accounts_and_history_show_an_order_with_the_same_message(o: AccountOrder, sequence: int) -> None:
    catalog = default_catalog()
    view = o.view()
    record = OrderRecord(
        **{f: getattr(view, f) for f in OrderView.__dataclass_fields__},
        finished_time_us=None,
        sequence=sequence,
    )
    from_accounts = order_message(o, catalog)
    assert from_accounts == api_order_message(record, catalog.markets[o.market])
    spec = catalog.markets[o.market]
    assert from_accounts.fee_asset == (spec.base.symbol if o.side == BUY else spec.quote.symbol)
    assert from_accounts.remaining_amount == spec.format_amount(o.remaining)
    # A row of a market no longer configured: identity, state and rates, no decimals.
    bare = api_order_message(record, None)
    assert (
        bare.order_id == o.order_id and bare.status == o.status and bare.price == "" and bare.fee_asset == ""
    )


# --- journal codecs ------------------------------------------------------------------------------


def test_both_machines_journal_the_command_with_its_time_stamped_in() -> None:
    a = ev.AccountsCommand()
    a.adjust_balance.user_id = 7
    record = ACCOUNTS_CODEC.encode(a, 1_700_000_000_000_123)
    assert a.time_us == 1_700_000_000_000_123
    assert record == a.SerializeToString()
    decoded, t = ACCOUNTS_CODEC.decode(record)
    assert decoded == a and t == 1_700_000_000_000_123
    m = ev.MatchingCommand(source="matching-0:timer", source_sequence=3)
    m.expire_orders.SetInParent()
    record = MATCHING_CODEC.encode(m, 42)
    decoded_m, t = MATCHING_CODEC.decode(record)
    assert decoded_m == m and t == 42 and decoded_m.time_us == 42


# --- the journaled record is the complete command ---------------------------------------------------


def test_the_journal_keeps_the_command_completed_at_the_boundary() -> None:
    """What apply writes into the record it journals: a new order's id, normalized time in force and
    fee rates; the order a cancel resolved from a client order id; the forward links. Nothing else."""
    x = MiniExchange()
    spec = x.catalog.markets["BTC_USDT"]
    x.deposit(1, "USDT", "100000")
    x.place(1, "BTC_USDT", BUY, price="30000", amount="0.5", client_order_id="c-1")
    x.cancel(1, client_order_id="c-1")
    kinds = [ev.AccountsCommand.FromString(r).WhichOneof("command") for r in x.accounts_journal]
    place_seq = kinds.index("place_order") + 1
    cancel_seq = kinds.index("cancel_order") + 1
    placed = ev.AccountsCommand()
    placed.time_us = ev.AccountsCommand.FromString(x.accounts_journal[place_seq - 1]).time_us
    placed.forward_links.add(shard="matching-0", previous_sequence=0)
    p = placed.place_order
    p.client_order_id = "c-1"
    p.order.CopyFrom(
        ev.PlaceOrderCommand(
            order_id=1,
            user_id=1,
            market="BTC_USDT",
            side=BUY,  # type: ignore[arg-type]
            type=1,  # type: ignore[arg-type]
            time_in_force=1,  # type: ignore[arg-type]  # GTC: the request left it unspecified
            price_ticks=spec.parse_price("30000"),
            amount_lots=spec.parse_amount("0.5"),
            maker_fee_ppm=spec.maker_fee_ppm,
            taker_fee_ppm=spec.taker_fee_ppm,
        )
    )
    assert x.accounts_journal[place_seq - 1] == placed.SerializeToString()
    cancel = ev.AccountsCommand.FromString(x.accounts_journal[cancel_seq - 1])
    assert (cancel.cancel_order.order_id, cancel.cancel_order.market) == (1, "BTC_USDT")
    assert cancel.cancel_order.client_order_id == "c-1"
    assert [(link.shard, link.previous_sequence) for link in cancel.forward_links] == [
        ("matching-0", place_seq)
    ]

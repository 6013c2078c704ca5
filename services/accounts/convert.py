"""Conversion between the accounts domain (services.accounts.model, services.accounts.ledger) and its
protobuf messages, at the machine's boundary: a journaled AccountsCommand decoded into the ledger's
command (with the matching events a settle command carries), and what the ledger changes encoded as
numbered AccountEvent records (`EventSink`)."""

from __future__ import annotations

from exchange.v1 import events_pb2 as ev

from services.accounts.ledger import AccountOrder
from services.accounts.model import (
    Accepted,
    AdjustBalance,
    Amended,
    AmendOrder,
    CancelAllOrders,
    CancelOrder,
    Command,
    Done,
    MoveOrder,
    OpenSubAccount,
    PlaceOrder,
    ReduceOrder,
    Rejected,
    SettleEvents,
    SettlementEvent,
    Trade,
    Transfer,
    Unreadable,
)
from services.common.errors import InvalidArgument, Reason
from services.common.quantities import Lots, Ticks, Units

# --- journaled commands -> domain ---------------------------------------------------------------


def is_reservation(cmd: ev.AccountsCommand) -> bool:
    """An amend_order marked by one empty ForwardLink: it reserves its sequence number for the reduce
    of the amend that follows it (see services.accounts.machine)."""
    links = cmd.forward_links
    return len(links) == 1 and not links[0].shard and cmd.WhichOneof("command") == "amend_order"


def place_from_proto(o: ev.PlaceOrderCommand, client_order_id: str) -> PlaceOrder:
    """The order of a journaled place_order (and its client order id, beside it in the command)."""
    return PlaceOrder(
        o.user_id,
        o.market,
        o.side,
        o.type,
        o.time_in_force,
        Ticks(o.price_ticks),
        Lots(o.amount_lots),
        Units(o.quote_budget),
        o.post_only,
        o.self_trade_prevention,
        o.expire_time_us,
        client_order_id,
        o.order_id,
    )


def command_from_proto(cmd: ev.AccountsCommand, source: str) -> Command:
    """The ledger's command of a journaled (or about to be journaled) AccountsCommand. `source` is the
    accounts source applying it: matching events caused by its own commands name them (command_seq)."""
    kind = cmd.WhichOneof("command")
    if kind == "place_order":
        placed = cmd.place_order
        return place_from_proto(placed.order, placed.client_order_id)
    if kind == "settle":
        return settle_from_proto(cmd.settle, source)
    if kind == "cancel_order":
        c = cmd.cancel_order
        return CancelOrder(c.user_id, c.order_id, c.client_order_id, c.market)
    if kind == "amend_order":
        a = cmd.amend_order
        return AmendOrder(
            a.user_id,
            a.order_id,
            a.client_order_id,
            a.market,
            Ticks(a.new_price_ticks),
            Lots(a.new_amount_lots),
            is_reservation(cmd),
        )
    if kind == "adjust_balance":
        b = cmd.adjust_balance
        return AdjustBalance(b.user_id, b.asset, Units(b.change), b.business, b.business_id)
    if kind == "cancel_all_orders":
        ca = cmd.cancel_all_orders
        return CancelAllOrders(ca.user_id, ca.market, ca.side)
    if kind == "reduce_order":
        r = cmd.reduce_order
        return ReduceOrder(r.user_id, r.order_id, r.client_order_id, Lots(r.new_amount_lots))
    if kind == "move_order":
        m = cmd.move_order
        return MoveOrder(m.user_id, m.order_id, m.client_order_id, Ticks(m.new_price_ticks))
    if kind == "open_sub_account":
        o = cmd.open_sub_account
        return OpenSubAccount(o.owner_user_id, o.label)
    if kind == "transfer":
        t = cmd.transfer
        return Transfer(t.from_user_id, t.to_user_id, t.asset, Units(t.amount), t.transfer_id)
    raise InvalidArgument("empty accounts command", Reason.INVALID_FIELD)


def settle_from_proto(batch: ev.SettleMatchingEventsCommand, source: str) -> SettleEvents:
    """A settle command's matching events as settlement sees them (one loop: this is the hot path)."""
    out: list[SettlementEvent] = []
    add = out.append
    for e in batch.events:
        kind = e.WhichOneof("event")
        if kind == "order_accepted":
            placed = e.order_accepted.order
            add(Accepted(e.sequence, e.market, e.time_us, placed.order_id, placed.user_id))
        elif kind == "order_done":
            d = e.order_done
            add(Done(e.sequence, e.market, e.time_us, d.order_id, d.user_id, d.reason, d.detail))
        elif kind == "trade_executed":
            t = e.trade_executed
            add(
                Trade(
                    e.sequence,
                    e.market,
                    e.time_us,
                    t.trade_id,
                    Ticks(t.price_ticks),
                    Lots(t.amount_lots),
                    Units(t.quote_units),
                    Units(t.base_units),
                    t.taker_side,
                    t.taker_order_id,
                    t.taker_user_id,
                    t.maker_order_id,
                    t.maker_user_id,
                    Units(t.taker_fee),
                    Units(t.maker_fee),
                )
            )
        elif kind == "order_amended":
            a = e.order_amended
            add(
                Amended(
                    e.sequence,
                    e.market,
                    e.time_us,
                    e.command_sequence if e.command_source == source else 0,
                    a.order_id,
                    a.user_id,
                    Ticks(a.price_ticks),
                    Lots(a.amount_lots),
                    Lots(a.remaining_lots),
                    a.priority_kept,
                )
            )
        elif kind == "command_rejected":
            own = e.command_sequence if e.command_source == source else 0
            add(Rejected(e.sequence, e.market, e.time_us, own, e.command_rejected.order_id))
        else:
            add(Unreadable(e.sequence, kind or ""))
    return SettleEvents(batch.shard, tuple(out), batch.first_sequence, batch.last_sequence)


# --- ledger changes -> AccountEvent records -----------------------------------------------------


class EventSink:
    """Turns ledger changes into serialized AccountEvent records, numbered from `next_seq` (the
    ledger's Sink).

    Fields are set in place on the event's sub-message: with upb that is about a third cheaper than
    building the sub-message and copying it in."""

    __slots__ = ("next_seq", "records", "source", "time_us", "users")

    def __init__(self, source: str, next_seq: int, time_us: int) -> None:
        self.source = source
        self.next_seq = next_seq
        self.time_us = time_us
        self.records: list[bytes] = []
        self.users: list[int] = []  # the user of each record, for per-user fan-out without parsing

    def _event(self, user: int) -> ev.AccountEvent:
        e = ev.AccountEvent(source=self.source, sequence=self.next_seq, time_us=self.time_us, user_id=user)
        self.next_seq += 1
        self.users.append(user)
        return e

    def balance(
        self,
        user: int,
        asset: str,
        business: int,
        business_id: str,
        d_avail: int,
        d_frozen: int,
        bal: list[int],
    ) -> None:
        e = self._event(user)
        b = e.balance_changed
        b.asset = asset
        b.business = business  # type: ignore[assignment]
        b.business_id = business_id
        # (Zero values are not written on the wire: not setting them is the same message, cheaper.)
        if d_avail:
            b.available_delta = d_avail
        if d_frozen:
            b.frozen_delta = d_frozen
        avail, frozen = bal
        if avail:
            b.available = avail
        if frozen:
            b.frozen = frozen
        self.records.append(e.SerializeToString())

    def order(self, o: AccountOrder) -> None:
        e = self._event(o.user_id)
        fill_order_state(e.order_updated, o)
        self.records.append(e.SerializeToString())

    def fill(
        self, user: int, trade: Trade, order_id: int, side: int, role: int, fee: int, fee_asset: str
    ) -> None:
        e = self._event(user)
        f = e.user_fill
        f.trade_id = trade.trade_id
        f.market = trade.market
        f.order_id = order_id
        f.side = side  # type: ignore[assignment]
        f.role = role  # type: ignore[assignment]
        f.price_ticks = trade.price
        f.amount_lots = trade.amount
        f.quote_units = trade.quote_units
        f.fee_units = fee
        f.fee_asset = fee_asset
        self.records.append(e.SerializeToString())


def fill_order_state(s: ev.OrderState, o: AccountOrder) -> None:
    """The order's state into `s` (fresh). Zero values are not written on the wire: they are not set
    (the same message, cheaper)."""
    s.order_id = o.order_id
    if o.client_order_id:
        s.client_order_id = o.client_order_id
    s.market = o.market
    s.side = o.side  # type: ignore[assignment]
    s.type = o.type  # type: ignore[assignment]
    s.time_in_force = o.tif  # type: ignore[assignment]
    if o.post_only:
        s.post_only = True
    if o.stp:
        s.self_trade_prevention = o.stp  # type: ignore[assignment]
    if o.price:
        s.price_ticks = o.price
    if o.amount:
        s.amount_lots = o.amount
    if o.quote_budget:
        s.quote_budget = o.quote_budget
    if o.filled:
        s.filled_lots = o.filled
    if o.filled_quote:
        s.filled_quote_units = o.filled_quote
    remaining = o.remaining
    if remaining:
        s.remaining_lots = remaining
    if o.fee:
        s.fee_units = o.fee
    s.status = o.status  # type: ignore[assignment]
    if o.detail:
        s.done_detail = o.detail  # type: ignore[assignment]
    s.created_time_us = o.created
    s.updated_time_us = o.updated
    if o.expire_at:
        s.expire_time_us = o.expire_at
    if o.maker_fee:
        s.maker_fee_ppm = o.maker_fee
    if o.taker_fee:
        s.taker_fee_ppm = o.taker_fee

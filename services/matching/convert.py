"""Conversion between the matching domain (services.matching.model) and its protobuf messages: commands
(both ways, and straight to MatchingCommand bytes for the forwarders) and events."""

from __future__ import annotations

import functools

from exchange.v1 import events_pb2 as ev
from google.protobuf.message import Message

from services.common.errors import InvalidArgument
from services.common.wire import field_bytes, varint
from services.matching.model import (
    CancelAll,
    CancelOrder,
    Command,
    CommandRejected,
    Event,
    ExpireOrders,
    MoveOrder,
    OrderAccepted,
    OrderAmended,
    OrderDone,
    PlaceOrder,
    ReduceOrder,
    TradeExecuted,
)


def place_to_proto(c: PlaceOrder) -> ev.PlaceOrderCommand:
    return ev.PlaceOrderCommand(
        order_id=c.order_id,
        user_id=c.user_id,
        market=c.market,
        side=c.side,  # type: ignore[arg-type]
        type=c.type,  # type: ignore[arg-type]
        time_in_force=c.tif,  # type: ignore[arg-type]
        post_only=c.post_only,
        self_trade_prevention=c.stp,  # type: ignore[arg-type]
        price_ticks=c.price,
        amount_lots=c.amount,
        quote_budget=c.quote_budget,
        expire_time_us=c.expire_at,
        maker_fee_ppm=c.maker_fee_ppm,
        taker_fee_ppm=c.taker_fee_ppm,
    )


def place_from_proto(p: ev.PlaceOrderCommand) -> PlaceOrder:
    return PlaceOrder(
        p.order_id,
        p.user_id,
        p.market,
        p.side,
        p.type,
        p.time_in_force,
        p.price_ticks,
        p.amount_lots,
        p.quote_budget,
        p.post_only,
        p.self_trade_prevention,
        p.expire_time_us,
        p.maker_fee_ppm,
        p.taker_fee_ppm,
    )


# MatchingCommand's field numbers, from the generated descriptor.
_MC = ev.MatchingCommand.DESCRIPTOR
BODY_FIELDS: dict[str, int] = {f.name: f.number for f in _MC.oneofs_by_name["command"].fields}
PLACE_ORDER = BODY_FIELDS["place_order"]
_SEQ_TAG = varint(_MC.fields_by_name["source_sequence"].number << 3)
_PREVIOUS_TAG = varint(_MC.fields_by_name["previous_sequence"].number << 3)
_SOURCE = _MC.fields_by_name["source"].number


@functools.lru_cache(maxsize=16)
def _source_field(source: str) -> bytes:
    return field_bytes(_SOURCE, source.encode()) if source else b""


def encode_command(source: str, seq: int, previous: int, body: int, payload: bytes) -> bytes:
    """A serialized MatchingCommand (without time_us: the shard stamps it) whose command is field
    `body` (BODY_FIELDS) holding the serialized `payload`: byte for byte what protobuf writes for that
    message (fields in number order, zero values left out), without building it. The one hand-built
    encoding of a matching command (accounts forwards with it)."""
    return b"".join(
        (
            _source_field(source),
            _SEQ_TAG + varint(seq) if seq else b"",
            _PREVIOUS_TAG + varint(previous) if previous else b"",
            field_bytes(body, payload),
        )
    )


def _body(cmd: Command) -> tuple[str, Message]:
    """The MatchingCommand oneof field of a domain command, and its message."""
    if isinstance(cmd, PlaceOrder):
        return "place_order", place_to_proto(cmd)
    if isinstance(cmd, CancelOrder):
        return "cancel_order", ev.CancelOrderCommand(
            order_id=cmd.order_id, user_id=cmd.user_id, market=cmd.market
        )
    if isinstance(cmd, CancelAll):
        return "cancel_all_orders", ev.CancelAllOrdersCommand(
            user_id=cmd.user_id,
            market=cmd.market,
            side=cmd.side,  # type: ignore[arg-type]
        )
    if isinstance(cmd, ReduceOrder):
        return "reduce_order", ev.ReduceOrderCommand(
            order_id=cmd.order_id, user_id=cmd.user_id, market=cmd.market, new_amount_lots=cmd.new_amount
        )
    if isinstance(cmd, MoveOrder):
        return "move_order", ev.MoveOrderCommand(
            order_id=cmd.order_id, user_id=cmd.user_id, market=cmd.market, new_price_ticks=cmd.new_price
        )
    if isinstance(cmd, ExpireOrders):
        return "expire_orders", ev.ExpireOrdersCommand()
    raise TypeError(f"unknown command {cmd!r}")  # pragma: no cover


def command_bytes(source: str, seq: int, previous: int, cmd: Command) -> bytes:
    """A domain command as a serialized MatchingCommand (encode_command)."""
    name, body = _body(cmd)
    return encode_command(source, seq, previous, BODY_FIELDS[name], body.SerializeToString())


def command_to_proto(
    source: str, seq: int, time_us: int, cmd: Command, previous: int = 0
) -> ev.MatchingCommand:
    m = ev.MatchingCommand(source=source, source_sequence=seq, time_us=time_us, previous_sequence=previous)
    name, body = _body(cmd)
    getattr(m, name).CopyFrom(body)
    return m


class InvalidCommand(InvalidArgument):
    """A command the shard refuses (not journaled, nothing changes)."""


def command_from_proto(m: ev.MatchingCommand) -> Command:
    kind = m.WhichOneof("command")
    if kind == "place_order":
        return place_from_proto(m.place_order)
    if kind == "cancel_order":
        c = m.cancel_order
        return CancelOrder(c.order_id, c.user_id, c.market)
    if kind == "cancel_all_orders":
        a = m.cancel_all_orders
        return CancelAll(a.user_id, a.market, a.side)
    if kind == "reduce_order":
        r = m.reduce_order
        return ReduceOrder(r.order_id, r.user_id, r.market, r.new_amount_lots)
    if kind == "move_order":
        v = m.move_order
        return MoveOrder(v.order_id, v.user_id, v.market, v.new_price_ticks)
    if kind == "expire_orders":
        return ExpireOrders()
    raise InvalidCommand(f"matching command without a body (source {m.source} #{m.source_sequence})")


def event_to_proto(
    e: Event,
    *,
    source: str,
    sequence: int,
    time_us: int,
    market: str,
    command_source: str,
    command_sequence: int,
    placed: ev.PlaceOrderCommand | None = None,
) -> ev.MatchingEvent:
    """The wire form of a domain event. `placed` is the command's own PlaceOrderCommand, if it has
    one: OrderAccepted then copies it instead of rebuilding it from the domain object."""
    m = ev.MatchingEvent(
        source=source,
        sequence=sequence,
        time_us=time_us,
        market=market,
        command_source=command_source,
        command_sequence=command_sequence,
    )
    t = type(e)
    if t is TradeExecuted:
        assert isinstance(e, TradeExecuted)
        m.trade_executed.CopyFrom(
            ev.TradeExecuted(
                trade_id=e.trade_id,
                price_ticks=e.price,
                amount_lots=e.amount,
                quote_units=e.quote_units,
                base_units=e.base_units,
                taker_side=e.taker_side,  # type: ignore[arg-type]
                taker_order_id=e.taker_order_id,
                taker_user_id=e.taker_user_id,
                maker_order_id=e.maker_order_id,
                maker_user_id=e.maker_user_id,
                taker_fee=e.taker_fee,
                maker_fee=e.maker_fee,
                taker_remaining_lots=e.taker_remaining,
                maker_remaining_lots=e.maker_remaining,
                taker_price_ticks=e.taker_price,
                taker_remaining_budget=e.taker_remaining_budget,
            )
        )
    elif t is OrderDone:
        assert isinstance(e, OrderDone)
        o = e.order
        m.order_done.CopyFrom(
            ev.OrderDone(
                order_id=o.order_id,
                user_id=o.user_id,
                side=o.side,  # type: ignore[arg-type]
                type=o.cmd.type,  # type: ignore[arg-type]
                reason=e.reason,  # type: ignore[arg-type]
                detail=e.detail,  # type: ignore[arg-type]
                price_ticks=o.price,
                filled_lots=o.filled,
                remaining_lots=o.remaining,
                filled_quote_units=o.filled_quote,
                remaining_budget=o.budget,
            )
        )
    elif t is OrderAccepted:
        assert isinstance(e, OrderAccepted)
        if placed is not None and placed.order_id == e.order.order_id:
            m.order_accepted.order.CopyFrom(placed)
        else:
            m.order_accepted.order.CopyFrom(place_to_proto(e.order))
    elif t is OrderAmended:
        assert isinstance(e, OrderAmended)
        m.order_amended.CopyFrom(
            ev.OrderAmended(
                order_id=e.order_id,
                user_id=e.user_id,
                side=e.side,  # type: ignore[arg-type]
                price_ticks=e.price,
                amount_lots=e.amount,
                remaining_lots=e.remaining,
                old_price_ticks=e.old_price,
                old_remaining_lots=e.old_remaining,
                priority_kept=e.priority_kept,
            )
        )
    elif t is CommandRejected:
        assert isinstance(e, CommandRejected)
        m.command_rejected.CopyFrom(
            ev.CommandRejected(
                order_id=e.order_id,
                user_id=e.user_id,
                reason=e.reason,  # type: ignore[arg-type]
                message=e.message,
            )
        )
    else:  # pragma: no cover
        raise TypeError(f"unknown event {e!r}")
    return m

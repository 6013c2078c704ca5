"""Accounts as a host state machine: journaled AccountsCommand protos in, numbered AccountEvent
records out, plus the matching commands to forward (the outbox). Wraps the Ledger.

Forwarding and its sequence chain. A journaled command with sequence N that forwards something sends
each shard one MatchingCommand numbered N (source_sequence). The machine keeps, per shard, the number of
the last command it forwarded there (`forwarded`, part of the state and snapshot) and stamps it into the
journaled command as AccountsCommand.forward_links while applying it, the way it stamps order ids; the
outbox (`outbox_commands`, a pure function of the journaled command) puts it into the MatchingCommand as
previous_sequence. So the outbox rebuilt from the journal after a restart carries the same chain, and a
shard can tell a resend (already applied) from a gap (something missing), which it refuses.

One amend, one command. AmendOrder is one journaled amend_order that is checked completely before
anything changes. A new amount alone forwards a reduce, a new price alone a move, both forward a reduce
and then a move (the reduce keeps priority and needs no funds; the move then takes the order, reduced,
to its new price). Those two matching commands need two sequence numbers: an amend of both is submitted
as a *reservation* (the same amend_order, marked by one empty ForwardLink; checked the same way, it
changes nothing and forwards nothing) immediately followed by the amend itself with sequence N, which
forwards the reduce as N - 1 (the reservation's number: nothing else can ever use it for that shard) and
the move as N. A crash between the two leaves only the harmless reservation; the amend itself is all or
nothing. The older reduce_order / move_order commands are still applied (journals written before).

Settlement quarantine: see services.accounts.ledger. Quarantined events are reported as QuarantineReport
effects (logged by the service once durable); the settle command is journaled and advances the shard's
settled sequence as usual.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from exchange.v1 import events_pb2 as ev

from services.accounts.ledger import AccountOrder, AdjustResult, Ledger
from services.common.errors import FailedPrecondition, InvalidArgument, Reason
from services.common.markets import MarketCatalog
from services.common.snapshot_codec import dumps_plain, loads_plain
from services.common.statemachine import CodecSpec, Outcome
from services.common.wire import field_bytes, varint

MACHINE_SNAPSHOT_VERSION = 2  # 2: forward chain, quarantine, placed price/amount (1 is still read)


@dataclass(frozen=True)
class PlaceResult:
    order: AccountOrder
    duplicate: bool


@dataclass(frozen=True)
class AdjustOutcome:
    result: AdjustResult
    seq: int


@dataclass(frozen=True)
class CancelAllResult:
    order_count: int


@dataclass(frozen=True)
class QuarantineReport:
    """A matching event that was not settled (an effect of the settle command, for the log)."""

    shard: str
    sequence: int
    kind: str
    why: str


class _EventSink:
    """Turns ledger changes into serialized AccountEvent records, numbered from `next_seq`.

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
        b.available_delta = d_avail
        b.frozen_delta = d_frozen
        b.available = bal[0]
        b.frozen = bal[1]
        self.records.append(e.SerializeToString())

    def order(self, o: AccountOrder) -> None:
        e = self._event(o.user_id)
        fill_order_state(e.order_updated, o)
        self.records.append(e.SerializeToString())

    def fill(
        self,
        user: int,
        trade_id: int,
        market: str,
        order_id: int,
        side: int,
        role: int,
        price: int,
        lots: int,
        quote: int,
        fee: int,
        fee_asset: str,
    ) -> None:
        e = self._event(user)
        f = e.user_fill
        f.trade_id = trade_id
        f.market = market
        f.order_id = order_id
        f.side = side  # type: ignore[assignment]
        f.role = role  # type: ignore[assignment]
        f.price_ticks = price
        f.amount_lots = lots
        f.quote_units = quote
        f.fee_units = fee
        f.fee_asset = fee_asset
        self.records.append(e.SerializeToString())


def fill_order_state(s: ev.OrderState, o: AccountOrder) -> None:
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
    s.price_ticks = o.price
    s.amount_lots = o.amount
    if o.quote_budget:
        s.quote_budget = o.quote_budget
    s.filled_lots = o.filled
    s.filled_quote_units = o.filled_quote
    s.remaining_lots = o.remaining
    s.fee_units = o.fee
    s.status = o.status  # type: ignore[assignment]
    if o.detail:
        s.done_detail = o.detail  # type: ignore[assignment]
    s.created_time_us = o.created
    s.updated_time_us = o.updated
    if o.expire_at:
        s.expire_time_us = o.expire_at
    s.maker_fee_ppm = o.maker_fee
    s.taker_fee_ppm = o.taker_fee


def order_state(o: AccountOrder) -> ev.OrderState:
    s = ev.OrderState()
    fill_order_state(s, o)
    return s


# MatchingCommand field numbers (events.proto).
_MC_SOURCE, _MC_SEQ, _MC_PREVIOUS = 1, 2, 4
_MC_PLACE, _MC_REDUCE, _MC_MOVE = 10, 13, 14
_MC_BODY = {
    "place_order": _MC_PLACE,
    "cancel_order": 11,
    "cancel_all_orders": 12,
    "reduce_order": _MC_REDUCE,
    "move_order": _MC_MOVE,
}


@functools.lru_cache(maxsize=16)
def _source_field(source: str) -> bytes:
    return field_bytes(_MC_SOURCE, source.encode()) if source else b""


_SEQ_TAG = varint(_MC_SEQ << 3)
_PREVIOUS_TAG = varint(_MC_PREVIOUS << 3)


def _matching_command(source: str, seq: int, previous: int, number: int, body: bytes) -> bytes:
    """A serialized MatchingCommand, byte for byte what protobuf writes (fields in number order,
    zero values left out)."""
    return b"".join(
        (
            _source_field(source),
            _SEQ_TAG + varint(seq) if seq else b"",
            _PREVIOUS_TAG + varint(previous) if previous else b"",
            field_bytes(number, body),
        )
    )


def is_reservation(cmd: ev.AccountsCommand) -> bool:
    """An amend_order marked by one empty ForwardLink: it reserves its sequence number for the reduce
    of the amend that follows it (see the module docstring)."""
    links = cmd.forward_links
    return len(links) == 1 and not links[0].shard and cmd.WhichOneof("command") == "amend_order"


def reservation_for(amend: ev.AccountsCommand) -> ev.AccountsCommand:
    """The reservation to submit immediately before `amend` (an amend_order of price and amount)."""
    r = ev.AccountsCommand()
    r.amend_order.CopyFrom(amend.amend_order)
    r.forward_links.add()
    return r


def _journaled_previous(links: Any, shard: str) -> int:
    for link in links:
        if link.shard == shard:
            return int(link.previous_sequence)
    return 0


def outbox_commands(
    source: str,
    seq: int,
    cmd: ev.AccountsCommand,
    catalog: MarketCatalog,
    previous_of: dict[str, int] | None = None,
) -> list[tuple[int, str, bytes]]:
    """The matching commands a journaled accounts command forwards: (source_sequence, shard,
    serialized MatchingCommand), in the order they are sent. A pure function of the journaled command
    (its forward_links give each shard's previous_sequence), so the outbox rebuilt from the journal
    after a restart is the same. Assembled from the serialized body: no message copies.
    `previous_of` (the machine, which has just stamped the links) saves reading them back."""
    kind = cmd.WhichOneof("command")
    links = cmd.forward_links
    if kind == "amend_order":
        if is_reservation(cmd):
            return []
        a = cmd.amend_order
        shard = catalog.markets[a.market].shard
        previous = previous_of.get(shard, 0) if previous_of is not None else _journaled_previous(links, shard)
        out: list[tuple[int, str, bytes]] = []
        if a.new_amount_lots:
            rseq = seq - 1 if a.new_price_ticks else seq
            reduce = ev.ReduceOrderCommand(
                order_id=a.order_id, user_id=a.user_id, market=a.market, new_amount_lots=a.new_amount_lots
            )
            out.append(
                (
                    rseq,
                    shard,
                    _matching_command(source, rseq, previous, _MC_REDUCE, reduce.SerializeToString()),
                )
            )
            previous = rseq
        if a.new_price_ticks:
            move = ev.MoveOrderCommand(
                order_id=a.order_id, user_id=a.user_id, market=a.market, new_price_ticks=a.new_price_ticks
            )
            out.append(
                (seq, shard, _matching_command(source, seq, previous, _MC_MOVE, move.SerializeToString()))
            )
        return out
    number = _MC_BODY.get(kind or "")
    if number is None:
        return []
    body: Any = cmd.place_order.order if kind == "place_order" else getattr(cmd, kind or "")
    data = body.SerializeToString()
    market = body.market
    shards = (
        catalog.shards if kind == "cancel_all_orders" and not market else (catalog.markets[market].shard,)
    )
    if previous_of is not None:
        return [
            (seq, shard, _matching_command(source, seq, previous_of.get(shard, 0), number, data))
            for shard in shards
        ]
    if not links:
        return [(seq, shard, _matching_command(source, seq, 0, number, data)) for shard in shards]
    return [
        (seq, shard, _matching_command(source, seq, _journaled_previous(links, shard), number, data))
        for shard in shards
    ]


class AccountsMachine:
    def __init__(
        self,
        ledger: Ledger,
        source: str,
        applied_seq: int = 0,
        event_seq: int = 0,
        forwarded: dict[str, int] | None = None,
    ) -> None:
        self.ledger = ledger
        self.source = source
        self._applied_seq = applied_seq
        self._event_seq = event_seq
        # Per matching shard: the sequence of the last command forwarded there (the next one's
        # previous_sequence).
        self.forwarded: dict[str, int] = dict(forwarded or {})

    @property
    def applied_seq(self) -> int:
        return self._applied_seq

    @property
    def event_seq(self) -> int:
        return self._event_seq

    def _link(self, seq: int, cmd: ev.AccountsCommand, shards: tuple[str, ...]) -> dict[str, int]:
        """Stamp each target shard's previous_sequence into the journaled command (or, on replay,
        check the journaled one) and advance the chain. Returns the previous sequence per shard."""
        forwarded = self.forwarded
        previous_of = {shard: forwarded.get(shard, 0) for shard in shards}
        stamped = cmd.forward_links
        if len(stamped):
            journaled = {link.shard: link.previous_sequence for link in stamped}
            if journaled != previous_of or len(stamped) != len(shards):
                raise RuntimeError(
                    f"journaled command {seq} has forward links {journaled}, the chain says {previous_of}"
                )
        else:
            for shard, previous in previous_of.items():
                link = stamped.add()  # (cheaper than add(**fields) with upb)
                link.shard = shard
                link.previous_sequence = previous
        for shard in shards:
            forwarded[shard] = seq
        return previous_of

    def apply(self, seq: int, time_us: int, cmd: ev.AccountsCommand) -> Outcome:
        led = self.ledger
        catalog = led.catalog
        sink = _EventSink(self.source, self._event_seq + 1, time_us)
        kind = cmd.WhichOneof("command")
        result: Any
        shards: tuple[str, ...] = ()
        reports: list[QuarantineReport] = []
        if kind == "settle":
            if not self._settle(seq, cmd.settle, time_us, sink, reports):
                return Outcome(journal=False)
            result = None
        elif kind == "adjust_balance":
            a = cmd.adjust_balance
            adjusted = led.adjust(a.user_id, a.asset, a.change, a.business, a.business_id, sink)
            if adjusted.duplicate:
                return Outcome(result=AdjustOutcome(adjusted, 0), journal=False)
            result = AdjustOutcome(adjusted, seq)
        elif kind == "place_order":
            p = cmd.place_order
            o = p.order
            order, duplicate = led.place(
                user=o.user_id,
                market=o.market,
                side=o.side,
                type=o.type,
                tif=o.time_in_force,
                price=o.price_ticks,
                amount=o.amount_lots,
                quote_budget=o.quote_budget,
                post_only=o.post_only,
                stp=o.self_trade_prevention,
                expire_at=o.expire_time_us,
                client_order_id=p.client_order_id,
                now=time_us,
                sink=sink,
                order_id=o.order_id,
            )
            if duplicate:
                return Outcome(result=PlaceResult(order, True), journal=False)
            # What the journal keeps (and matching receives) is the complete order.
            o.order_id = order.order_id
            o.time_in_force = order.tif  # type: ignore[assignment]
            o.maker_fee_ppm = order.maker_fee
            o.taker_fee_ppm = order.taker_fee
            # The hot path, forwarded without the general outbox_commands (same bytes: the tests
            # rebuild every forward from the journal and compare).
            shard = catalog.markets[order.market].shard
            previous = self._link(seq, cmd, (shard,))[shard]
            self._applied_seq = seq
            self._event_seq = sink.next_seq - 1
            mcmd = _matching_command(self.source, seq, previous, _MC_PLACE, o.SerializeToString())
            return Outcome(
                result=PlaceResult(order, False),
                events=sink.records,
                keys=sink.users,
                effects=[(seq, shard, mcmd)],
            )
        elif kind == "cancel_order":
            c = cmd.cancel_order
            order, first = led.request_cancel(c.user_id, c.order_id, c.client_order_id, c.market)
            if not first:
                return Outcome(result=order, journal=False)
            c.order_id = order.order_id
            c.market = order.market
            shards = (catalog.markets[order.market].shard,)
            result = order
        elif kind == "cancel_all_orders":
            ca = cmd.cancel_all_orders
            _, count = led.cancel_all_shards(ca.user_id, ca.market, ca.side)
            if count == 0:
                return Outcome(result=CancelAllResult(0), journal=False)
            shards = (catalog.markets[ca.market].shard,) if ca.market else catalog.shards
            result = CancelAllResult(count)
        elif kind == "amend_order":
            am = cmd.amend_order
            plan = led.plan_amend(
                am.user_id, am.order_id, am.client_order_id, am.market, am.new_price_ticks, am.new_amount_lots
            )
            order = plan.order
            shard = catalog.markets[order.market].shard
            both = bool(am.new_price_ticks and am.new_amount_lots)
            if is_reservation(cmd):
                if not both:
                    raise InvalidArgument(
                        "only an amend of both price and amount takes a reservation", Reason.INVALID_FIELD
                    )
                am.order_id = order.order_id
                am.market = order.market
                self._applied_seq = seq
                return Outcome(result=order)
            if both and self.forwarded.get(shard, 0) >= seq - 1:
                raise FailedPrecondition(
                    "an amend of both price and amount must follow its reservation", Reason.INTERNAL
                )
            am.order_id = order.order_id
            am.market = order.market
            result = led.apply_amend(plan, seq, sink)
            shards = (shard,)
        elif kind == "reduce_order":
            r = cmd.reduce_order
            order = led.request_reduce(r.user_id, r.order_id, r.client_order_id, r.new_amount_lots)
            r.order_id = order.order_id
            r.market = order.market
            shards = (catalog.markets[order.market].shard,)
            result = order
        elif kind == "move_order":
            m = cmd.move_order
            order = led.request_move(m.user_id, m.order_id, m.client_order_id, m.new_price_ticks, seq, sink)
            m.order_id = order.order_id
            m.market = order.market
            shards = (catalog.markets[order.market].shard,)
            result = order
        else:
            raise InvalidArgument("empty accounts command", Reason.INVALID_FIELD)
        effects: list[Any] = (
            outbox_commands(self.source, seq, cmd, catalog, self._link(seq, cmd, shards)) if shards else []
        )
        self._applied_seq = seq
        self._event_seq = sink.next_seq - 1
        effects.extend(reports)
        return Outcome(result=result, events=sink.records, keys=sink.users, effects=effects)

    def _settle(
        self,
        seq: int,
        batch: ev.SettleMatchingEventsCommand,
        now: int,
        sink: _EventSink,
        reports: list[QuarantineReport],
    ) -> bool:
        led = self.ledger
        shard = batch.shard
        last = led.settled.get(shard, 0)
        events: Any = batch.events
        if not events or events[len(events) - 1].sequence <= last:
            return False
        if events[0].sequence <= last:  # a resend overlapping what is settled: skip the old part
            events = [e for e in events if e.sequence > last]
        if events[0].sequence != last + 1 or events[len(events) - 1].sequence != last + len(events):
            # Refused (changes nothing, the writer goes on): settling past a gap would lose events.
            raise FailedPrecondition(
                f"matching events of {shard} are not contiguous after {last}", Reason.SEQUENCE_GAP
            )
        touched: dict[int, AccountOrder] = {}
        source = self.source
        for e in events:
            kind = e.WhichOneof("event")
            why = ""
            if kind == "trade_executed":
                t = e.trade_executed
                why = led.trade_problem(
                    e.market,
                    t.price_ticks,
                    t.amount_lots,
                    t.quote_units,
                    t.base_units,
                    t.taker_side,
                    t.taker_order_id,
                    t.taker_user_id,
                    t.maker_order_id,
                    t.maker_user_id,
                    t.taker_fee,
                    t.maker_fee,
                )
                if not why:
                    led.on_trade(
                        e.market,
                        t.trade_id,
                        t.price_ticks,
                        t.amount_lots,
                        t.quote_units,
                        t.base_units,
                        t.taker_side,
                        t.taker_order_id,
                        t.maker_order_id,
                        t.taker_fee,
                        t.maker_fee,
                        e.time_us,
                        sink,
                        touched,
                    )
            elif kind == "order_done":
                d = e.order_done
                why = led.done_problem(d.order_id, d.user_id, e.market, d.reason)
                if not why:
                    led.on_done(d.order_id, d.reason, d.detail, e.time_us, sink, touched)
            elif kind == "order_accepted":
                placed = e.order_accepted.order
                why = led.accepted_problem(placed.order_id, placed.user_id, e.market)
                if not why:
                    led.on_accepted(placed.order_id, e.time_us, touched)
            elif kind == "order_amended":
                a = e.order_amended
                cmd_seq = e.command_sequence if e.command_source == source else 0
                why = led.amended_problem(
                    cmd_seq,
                    a.order_id,
                    a.user_id,
                    e.market,
                    a.price_ticks,
                    a.amount_lots,
                    a.remaining_lots,
                    a.priority_kept,
                )
                if not why:
                    led.on_amended(
                        cmd_seq,
                        a.order_id,
                        a.price_ticks,
                        a.amount_lots,
                        a.remaining_lots,
                        a.priority_kept,
                        e.time_us,
                        sink,
                        touched,
                    )
            elif kind == "command_rejected":
                r = e.command_rejected
                if e.command_source == source:
                    led.on_rejected(e.command_sequence, r.order_id, sink, touched)
            else:
                why = "event without a body"
            if why:
                reports.append(QuarantineReport(*led.quarantine_event(shard, e.sequence, kind or "", why)))
        for o in touched.values():
            sink.order(o)
        led.settled[shard] = events[-1].sequence
        return True

    # --- host protocol -------------------------------------------------------------------------

    def snapshot(self) -> bytes:
        return dumps_plain(
            {
                "version": MACHINE_SNAPSHOT_VERSION,
                "source": self.source,
                "applied_seq": self._applied_seq,
                "event_seq": self._event_seq,
                "forwarded": sorted(self.forwarded.items()),
                "ledger": self.ledger.snapshot(),
            }
        )

    @classmethod
    def restore(
        cls, catalog: MarketCatalog, source: str, data: bytes | None, *, finished_keep: int = 100_000
    ) -> AccountsMachine:
        if data is None:
            return cls(Ledger(catalog, finished_keep=finished_keep), source)
        state: Mapping[str, Any] = loads_plain(data)
        if state.get("version") not in (1, MACHINE_SNAPSHOT_VERSION) or state.get("source") != source:
            raise ValueError("snapshot is not an accounts snapshot of this source")
        ledger = Ledger.restore(catalog, state["ledger"], finished_keep=finished_keep)
        # Version 1 did not keep the forward chain: it starts empty again.
        forwarded = {str(k): int(v) for k, v in state.get("forwarded", ())}
        return cls(ledger, source, int(state["applied_seq"]), int(state["event_seq"]), forwarded)

    def state_hash(self) -> str:
        import hashlib

        h = hashlib.sha256(
            repr((self._applied_seq, self._event_seq, sorted(self.forwarded.items()))).encode()
        )
        h.update(repr(self.ledger.snapshot()).encode())
        return h.hexdigest()


def _encode(cmd: ev.AccountsCommand, time_us: int) -> bytes:
    cmd.time_us = time_us
    return cmd.SerializeToString()


def _decode(record: bytes) -> tuple[ev.AccountsCommand, int]:
    cmd = ev.AccountsCommand.FromString(record)
    return cmd, cmd.time_us


CODEC: CodecSpec[ev.AccountsCommand] = CodecSpec(encode=_encode, decode=_decode)

"""Accounts as a host state machine: journaled AccountsCommand protos in, numbered AccountEvent
records out, plus the matching commands to forward (the outbox). Wraps the Ledger.

The boundary. `apply` decodes the journaled command into the ledger's plain command
(services.accounts.convert), lets the ledger apply it, and then, in one step (`_complete`), writes into
the journaled record what the ledger decided: the order a command names (its id and market, resolved
from a client order id; a new order's id, normalized time in force and fee rates) and the forward
links. What the journal keeps, and what matching receives, is so the complete command; on replay the
same values are written again (and the links checked).

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

Sub-accounts (services.accounts.subaccounts): open_sub_account allocates the sub-account's user id
while applied (so a replay allocates the same) and forwards nothing; transfer moves available funds
between an owner and its sub-account (two BalanceChanged events, TRANSFER_OUT and TRANSFER_IN). A
repeated (owner, label) or (owner, transfer_id) answers the original result and is not journaled.

Settlement quarantine: see services.accounts.ledger. Quarantined events are reported as QuarantineReport
effects (logged by the service once durable); the settle command is journaled and advances the shard's
settled sequence as usual.

Moving a market (route_market, services.matching.handover has the protocol): the machine keeps where it
sends each market (`routes`, the configuration's shard unless a move changed it) and the markets halted
for a move (`halted`): their orders, cancels and amends, and a cancel-all touching them, are refused
(UNAVAILABLE, MARKET_MOVING: retryable, nothing changes) and the halt is forwarded in the old shard's
chain (HaltMarketCommand). The switch to the new shard waits (refused, retryable) until the old shard's
events up to the export are settled. A forwarded command's shard is the one its forward link names, so
the outbox rebuilt from the journal goes where it went, whatever the routes are now.

Adding a market while running (add_market): its spec is journaled and put into the catalog (`added`,
part of the state: a restart puts it there again before the ledger is restored); a spec the
configuration already has (the operator added it to the file too) is taken as it is.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

from exchange.v1 import events_pb2 as ev
from exchange.v1 import types_pb2

from services.accounts.convert import EventSink, command_from_proto, is_reservation, place_from_proto
from services.accounts.ledger import AccountOrder, AdjustResult, Ledger
from services.accounts.model import (
    AdjustBalance,
    AmendOrder,
    CancelAllOrders,
    CancelOrder,
    MoveOrder,
    OpenSubAccount,
    ReduceOrder,
    SettleEvents,
    Transfer,
)
from services.accounts.subaccounts import OpenResult, TransferResult
from services.common.codec import stamped_codec
from services.common.errors import (
    ExchangeError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Reason,
    Unavailable,
)
from services.common.markets import MarketCatalog, MarketSpec
from services.common.snapshot_codec import dumps_plain, loads_plain
from services.common.spec_codec import spec_from_message
from services.common.statemachine import CodecSpec, Outcome
from services.common.values import value
from services.matching import model as matching
from services.matching.convert import BODY_FIELDS, PLACE_ORDER, command_bytes, encode_command

MACHINE_SNAPSHOT_VERSION = 2  # 2: forward chain, quarantine, placed price/amount (1 is still read)


@value
class PlaceResult:
    order: AccountOrder
    duplicate: bool


@value
class AdjustOutcome:
    result: AdjustResult
    seq: int


@value
class OpenOutcome:
    """OpenSubAccount's answer; seq is the sequence of the command that opened it."""

    result: OpenResult
    seq: int


@value
class TransferOutcome:
    """Transfer's answer; the record carries the sequence of the command that applied it."""

    result: TransferResult


@value
class CancelAllResult:
    order_count: int


@value
class AddMarketResult:
    spec: MarketSpec
    seq: int


@value
class RouteResult:
    """RouteMarket's answer; seq is 0 when nothing changed."""

    market: str
    shard: str
    halted: bool
    seq: int


MOVE_RETRY_MS = 200
HALT_MARKET = BODY_FIELDS["halt_market"]


def market_moving(market: str, why: str) -> Unavailable:
    return Unavailable(
        f"market {market} {why}; retry shortly", MOVE_RETRY_MS, Reason.MARKET_MOVING, {"market": market}
    )


@value
class QuarantineReport:
    """A matching event that was not settled (an effect of the settle command, for the log)."""

    shard: str
    sequence: int
    kind: str
    why: str


# Accounts commands forwarded as they are: their body becomes the MatchingCommand body of the same name
# (place_order forwards its order, amend_order a reduce and/or a move).
_FORWARDED = {
    kind: BODY_FIELDS[kind] for kind in ("cancel_order", "cancel_all_orders", "reduce_order", "move_order")
}


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


def add_to_catalog(catalog: MarketCatalog, spec: MarketSpec) -> None:
    """Put a market added while running into the process's catalog (shared by the ledger, the
    servicer and the views, so each sees it at once)."""
    markets = catalog.markets
    if not isinstance(markets, dict):
        raise TypeError("the catalog's markets cannot take a market")
    markets[spec.symbol] = spec


def _journaled_shard(links: Any, default: str) -> str:
    """The shard a journaled command was forwarded to (its forward link); `default` for a journal
    written before the links."""
    return str(links[0].shard) if len(links) and links[0].shard else default


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
    after a restart is the same. Assembled from the serialized body (services.matching.convert's
    encoder): no message copies. `previous_of` (the machine, which has just stamped the links) saves
    reading them back."""
    kind = cmd.WhichOneof("command")
    links = cmd.forward_links
    if kind == "place_order":  # the hot path
        order = cmd.place_order.order
        if previous_of is not None:
            shard, previous = next(iter(previous_of.items()))
        else:
            shard = _journaled_shard(links, catalog.markets[order.market].shard)
            previous = _journaled_previous(links, shard)
        return [(seq, shard, encode_command(source, seq, previous, PLACE_ORDER, order.SerializeToString()))]
    if kind == "amend_order":
        if is_reservation(cmd):
            return []
        a = cmd.amend_order
        if previous_of is not None:
            shard, previous = next(iter(previous_of.items()))
        else:
            shard = _journaled_shard(links, catalog.markets[a.market].shard)
            previous = _journaled_previous(links, shard)
        out: list[tuple[int, str, bytes]] = []
        if a.new_amount_lots:
            rseq = seq - 1 if a.new_price_ticks else seq
            reduce = matching.ReduceOrder(a.order_id, a.user_id, a.market, a.new_amount_lots)
            out.append((rseq, shard, command_bytes(source, rseq, previous, reduce)))
            previous = rseq
        if a.new_price_ticks:
            move = matching.MoveOrder(a.order_id, a.user_id, a.market, a.new_price_ticks)
            out.append((seq, shard, command_bytes(source, seq, previous, move)))
        return out
    if kind == "route_market":
        r = cmd.route_market
        if not len(links):
            return []  # a switch to the new shard forwards nothing
        shard = str(links[0].shard)
        previous = previous_of[shard] if previous_of is not None else int(links[0].previous_sequence)
        halt = ev.HaltMarketCommand(market=r.market, resume=not r.halted).SerializeToString()
        return [(seq, shard, encode_command(source, seq, previous, HALT_MARKET, halt))]
    field = _FORWARDED.get(kind or "")
    if field is None:
        return []
    body: Any = getattr(cmd, kind or "")
    data = body.SerializeToString()
    market = body.market
    if previous_of is not None:
        shards: tuple[str, ...] = tuple(previous_of)
    elif len(links):
        shards = tuple(str(link.shard) for link in links)
    else:
        shards = (
            catalog.shards if kind == "cancel_all_orders" and not market else (catalog.markets[market].shard,)
        )
    if previous_of is not None:
        return [
            (seq, shard, encode_command(source, seq, previous_of.get(shard, 0), field, data))
            for shard in shards
        ]
    return [
        (seq, shard, encode_command(source, seq, _journaled_previous(links, shard), field, data))
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
        # Moving markets (see the module docstring): market -> shard where a move put it; market ->
        # the shard it is halted on.
        self.routes: dict[str, str] = {}
        self.halted: dict[str, str] = {}
        # Markets added while running: market -> its spec (serialized exchange.v1.MarketSpec).
        self.added: dict[str, bytes] = {}

    def shard_of(self, market: str) -> str:
        """The matching shard this accounts shard sends `market`'s commands to."""
        shard = self.routes.get(market)
        return shard if shard is not None else self.ledger.catalog.markets[market].shard

    def all_shards(self) -> tuple[str, ...]:
        """Every matching shard owning a market (a cancel-all of every market goes to each)."""
        if not self.routes and not self.added:
            return self.ledger.catalog.shards
        return tuple(sorted({self.shard_of(m) for m in self.ledger.catalog.markets}))

    def _check_moving(self, user: int, order_id: int, client_order_id: str, market: str) -> None:
        """Refuse (retryably) a command for an order on a market halted for a move (changes nothing)."""
        if market:
            if market in self.halted:
                raise market_moving(market, "is moving to another matching shard")
            return
        try:
            order = self.ledger.lookup(user, order_id, client_order_id)
        except ExchangeError:
            return  # the command's own checks answer
        if order.market in self.halted:
            raise market_moving(order.market, "is moving to another matching shard")

    @property
    def applied_seq(self) -> int:
        return self._applied_seq

    @property
    def event_seq(self) -> int:
        return self._event_seq

    def apply(self, seq: int, time_us: int, record: ev.AccountsCommand) -> Outcome:
        kind = record.WhichOneof("command")
        if kind == "place_order":
            return self._place(seq, time_us, record)
        if kind == "route_market":
            return self._route(seq, record)
        if kind == "add_market":
            return self._add_market(seq, record)
        cmd = command_from_proto(record, self.source)
        if self.halted and not isinstance(cmd, (SettleEvents, AdjustBalance, Transfer, OpenSubAccount)):
            self._check_halted(cmd)
        led = self.ledger
        catalog = led.catalog
        sink = EventSink(self.source, self._event_seq + 1, time_us)
        result: Any
        order: AccountOrder | None = None
        shards: tuple[str, ...] = ()
        effects: list[Any] = []
        if isinstance(cmd, SettleEvents):
            quarantined = led.settle(cmd, sink)
            if quarantined is None:
                return Outcome(journal=False)
            if quarantined:
                effects = [QuarantineReport(*q) for q in quarantined]
            result = None
        elif isinstance(cmd, AdjustBalance):
            adjusted = led.adjust(cmd, sink)
            if adjusted.duplicate:
                return Outcome(result=AdjustOutcome(adjusted, 0), journal=False)
            result = AdjustOutcome(adjusted, seq)
        elif isinstance(cmd, CancelOrder):
            order, first = led.request_cancel(cmd)
            if not first:
                return Outcome(result=order, journal=False)
            shards = (self.shard_of(order.market),)
            result = order
        elif isinstance(cmd, CancelAllOrders):
            _, count = led.cancel_all_shards(cmd)
            if count == 0:
                return Outcome(result=CancelAllResult(0), journal=False)
            shards = (self.shard_of(cmd.market),) if cmd.market else self.all_shards()
            result = CancelAllResult(count)
        elif isinstance(cmd, AmendOrder):
            plan = led.plan_amend(cmd)
            order = plan.order
            shard = self.shard_of(order.market)
            both = bool(cmd.new_price and cmd.new_amount)
            if cmd.reservation:
                if not both:
                    raise InvalidArgument(
                        "only an amend of both price and amount takes a reservation", Reason.INVALID_FIELD
                    )
                self._complete(seq, record, record.amend_order, order, ())
                self._applied_seq = seq
                return Outcome(result=order)
            if both and self.forwarded.get(shard, 0) >= seq - 1:
                raise FailedPrecondition(
                    "an amend of both price and amount must follow its reservation", Reason.INTERNAL
                )
            result = led.apply_amend(plan, seq, sink)
            shards = (shard,)
        elif isinstance(cmd, ReduceOrder):
            order = result = led.request_reduce(cmd)
            shards = (self.shard_of(order.market),)
        elif isinstance(cmd, MoveOrder):
            order = result = led.request_move(cmd, seq, sink)
            shards = (self.shard_of(order.market),)
        elif isinstance(cmd, Transfer):
            moved = led.transfer(cmd, seq, sink)
            if moved.duplicate:
                return Outcome(result=TransferOutcome(moved), journal=False)
            result = TransferOutcome(moved)
        elif isinstance(cmd, OpenSubAccount):
            opened = led.open_sub_account(cmd, seq)
            if opened.duplicate:
                return Outcome(result=OpenOutcome(opened, opened.sub_account.sequence), journal=False)
            result = OpenOutcome(opened, seq)
        else:  # pragma: no cover - command_from_proto decodes the place_order handled above
            raise TypeError(f"unexpected command {cmd!r}")
        if order is not None:  # cancel_order, amend_order, reduce_order, move_order
            previous_of = self._complete(seq, record, getattr(record, kind or ""), order, shards)
            effects = outbox_commands(self.source, seq, record, catalog, previous_of)
        elif shards:  # cancel_all_orders
            effects = outbox_commands(self.source, seq, record, catalog, self._link(seq, record, shards))
        self._applied_seq = seq
        self._event_seq = sink.next_seq - 1
        return Outcome(result=result, events=sink.records, keys=sink.users, effects=effects)

    def _place(self, seq: int, time_us: int, record: ev.AccountsCommand) -> Outcome:
        """place_order, the hot path: its sub-messages are read once (a upb sub-message read builds a
        wrapper), and it is forwarded without the general outbox_commands (the same bytes: the tests
        rebuild every forward from the journal and compare)."""
        placed = record.place_order
        o = placed.order
        led = self.ledger
        if self.halted and o.market in self.halted:
            raise market_moving(o.market, "is moving to another matching shard")
        sink = EventSink(self.source, self._event_seq + 1, time_us)
        order, duplicate = led.place(place_from_proto(o, placed.client_order_id), time_us, sink)
        if duplicate:
            return Outcome(result=PlaceResult(order, True), journal=False)
        shard = self.shard_of(order.market) if self.routes else led.catalog.markets[order.market].shard
        previous = self._complete(seq, record, o, order, (shard,))[shard]
        self._applied_seq = seq
        self._event_seq = sink.next_seq - 1
        forward = encode_command(self.source, seq, previous, PLACE_ORDER, o.SerializeToString())
        return Outcome(
            result=PlaceResult(order, False),
            events=sink.records,
            keys=sink.users,
            effects=[(seq, shard, forward)],
        )

    def _check_halted(self, cmd: Any) -> None:
        if isinstance(cmd, CancelAllOrders):
            if cmd.market:
                self._check_moving(cmd.user_id, 0, "", cmd.market)
                return
            for o in self.ledger.user_orders.get(cmd.user_id, {}).values():
                if o.market in self.halted:
                    raise market_moving(o.market, "is moving to another matching shard")
            return
        market = getattr(cmd, "market", "")
        self._check_moving(cmd.user_id, cmd.order_id, cmd.client_order_id, market)

    # --- moving a market -------------------------------------------------------------------------

    def _route(self, seq: int, record: ev.AccountsCommand) -> Outcome:
        r = record.route_market
        market = r.market
        if market not in self.ledger.catalog.markets:
            raise NotFound(f"unknown market {market!r}", Reason.UNKNOWN_MARKET)
        current = self.shard_of(market)
        halted = market in self.halted
        target = r.shard or current
        effects: list[Any] = []
        if r.halted:
            if target != current:
                raise FailedPrecondition(
                    f"{market} is on {current}, not on {target}",
                    Reason.MARKET_NOT_ON_SHARD,
                    {"shard": current},
                )
            if halted:
                return Outcome(result=RouteResult(market, current, True, 0), journal=False)
            self.halted[market] = current
            effects = outbox_commands(
                self.source, seq, record, self.ledger.catalog, self._link(seq, record, (current,))
            )
        elif target == current:  # lift the halt (the move was abandoned), or already there
            if not halted:
                return Outcome(result=RouteResult(market, current, False, 0), journal=False)
            del self.halted[market]
            effects = outbox_commands(
                self.source, seq, record, self.ledger.catalog, self._link(seq, record, (current,))
            )
        else:  # the switch to the shard that took the book over
            if r.from_shard and r.from_shard != current:
                raise FailedPrecondition(
                    f"{market} is on {current}, not on {r.from_shard}",
                    Reason.MARKET_NOT_ON_SHARD,
                    {"shard": current},
                )
            if not halted:
                raise FailedPrecondition(f"{market} must be halted before it moves", Reason.MARKET_MOVING)
            settled = self.ledger.settled.get(current, 0)
            if settled < r.after_sequence:
                raise market_moving(
                    market, f"waits for {current}'s events up to {r.after_sequence} (settled {settled})"
                )
            del self.halted[market]
            self.routes[market] = target
            if target == self.ledger.catalog.markets[market].shard:
                del self.routes[market]
        self._applied_seq = seq
        return Outcome(result=RouteResult(market, target, bool(r.halted), seq), effects=effects)

    def _add_market(self, seq: int, record: ev.AccountsCommand) -> Outcome:
        m = record.add_market.spec
        data = m.SerializeToString(deterministic=True)
        catalog = self.ledger.catalog
        if m.symbol in self.added:
            if self.added[m.symbol] != data:
                raise FailedPrecondition(
                    f"market {m.symbol} was added with another spec", Reason.INVALID_FIELD
                )
            return Outcome(result=AddMarketResult(catalog.markets[m.symbol], 0), journal=False)
        spec = spec_from_message(m, catalog.assets)
        known = catalog.markets.get(spec.symbol)
        if known is not None and known != spec:
            raise FailedPrecondition(f"market {m.symbol} exists with another spec", Reason.INVALID_FIELD)
        add_to_catalog(catalog, spec)
        self.added[spec.symbol] = data
        self._applied_seq = seq
        return Outcome(result=AddMarketResult(spec, seq))

    # --- the boundary: what the journal keeps ---------------------------------------------------

    def _complete(
        self, seq: int, record: ev.AccountsCommand, body: Any, order: AccountOrder, shards: tuple[str, ...]
    ) -> dict[str, int]:
        """Write into the journaled record what the ledger decided (see the module docstring): into
        its `body`, the order it names (a new order's id, normalized time in force and fee rates; for
        a cancel, amend, reduce or move the id and market of the order it resolved), and for each
        target shard its forward link (`_link`). Returns the previous sequence per target shard."""
        body.order_id = order.order_id
        if isinstance(body, ev.PlaceOrderCommand):
            body.time_in_force = order.tif  # type: ignore[assignment]
            body.maker_fee_ppm = order.maker_fee
            body.taker_fee_ppm = order.taker_fee
        else:
            body.market = order.market
        return self._link(seq, record, shards) if shards else {}

    def _link(self, seq: int, cmd: ev.AccountsCommand, shards: tuple[str, ...]) -> dict[str, int]:
        """Stamp each target shard's previous_sequence into the journaled command (or, on replay,
        check the journaled one) and advance the chain. Returns the previous sequence per shard."""
        forwarded = self.forwarded
        if len(shards) == 1:  # (most commands: no comprehension)
            previous_of = {shards[0]: forwarded.get(shards[0], 0)}
        else:
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

    # --- host protocol -------------------------------------------------------------------------

    def snapshot(self) -> bytes:
        return dumps_plain(
            {
                "version": MACHINE_SNAPSHOT_VERSION,
                "source": self.source,
                "applied_seq": self._applied_seq,
                "event_seq": self._event_seq,
                "forwarded": sorted(self.forwarded.items()),
                "routes": sorted(self.routes.items()),
                "halted": sorted(self.halted.items()),
                "added": sorted(self.added.items()),
                "ledger": self.ledger.snapshot(),
            }
        )

    @classmethod
    def restore(
        cls,
        catalog: MarketCatalog,
        source: str,
        data: bytes | None,
        *,
        finished_keep: int = 100_000,
        shard: int = 0,
        shards: int = 1,
    ) -> AccountsMachine:
        """From a snapshot (None: empty), as accounts shard `shard` of `shards` (sharded by user)."""
        if data is None:
            return cls(Ledger(catalog, finished_keep=finished_keep, shard=shard, shards=shards), source)
        state: Mapping[str, Any] = loads_plain(data)
        if state.get("version") not in (1, MACHINE_SNAPSHOT_VERSION) or state.get("source") != source:
            raise ValueError("snapshot is not an accounts snapshot of this source")
        added = {str(k): bytes(v) for k, v in state.get("added", ())}
        for raw in added.values():  # markets added while running, back into the catalog first
            spec = spec_from_message(types_pb2.MarketSpec.FromString(raw), catalog.assets)
            if spec.symbol not in catalog.markets:
                add_to_catalog(catalog, spec)
        ledger = Ledger.restore(
            catalog, state["ledger"], finished_keep=finished_keep, shard=shard, shards=shards
        )
        # Version 1 did not keep the forward chain: it starts empty again.
        forwarded = {str(k): int(v) for k, v in state.get("forwarded", ())}
        machine = cls(ledger, source, int(state["applied_seq"]), int(state["event_seq"]), forwarded)
        machine.routes = {str(k): str(v) for k, v in state.get("routes", ())}
        machine.halted = {str(k): str(v) for k, v in state.get("halted", ())}
        machine.added = added
        return machine

    def state_hash(self) -> str:
        moves = (
            (sorted(self.routes.items()), sorted(self.halted.items()), sorted(self.added.items()))
            if self.routes or self.halted or self.added
            else ()
        )
        h = hashlib.sha256(
            repr((self._applied_seq, self._event_seq, sorted(self.forwarded.items()), *moves)).encode()
        )
        h.update(repr(self.ledger.snapshot()).encode())
        return h.hexdigest()


CODEC: CodecSpec[ev.AccountsCommand] = stamped_codec(ev.AccountsCommand.FromString)

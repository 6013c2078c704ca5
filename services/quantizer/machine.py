"""The quantizer's hosted strategies as one journaled state machine on the shared host
(services.common.host.StateMachineHost), like accounts and matching.

Why a journaled state machine (and not SQL): the strategies are already deterministic state machines
(core.Strategy.apply: events in, intents out, no clock or I/O), so the service only has to journal the
inputs in the order it applies them: the user's commands, the accounts events that concern the
strategies (through AccountsService.StreamAccountEvents, each batch journaled with the accounts
sequence it reaches, so a fill is applied exactly once: events at or below the checkpoint are skipped
on a resend or after a restart) and clock ticks carrying their time. A restart is then snapshot +
replay and gives exactly the state (and the client order ids) of before the crash; there is no
second copy of the state to keep consistent with an outbox, and the host already gives group commit,
fail-stop and snapshots. SQL would have had to store every strategy's whole state per event anyway.

Commands are small JSON objects (`"t"` names the kind; the host stamps the time into the record):

- create {user, client_id, market, config, price, invest_quote, invest_base, slippage_ppm}: a new
  strategy (its id allocated here, in order); per-user limits (running strategies, capital per asset)
  are checked here. Its sub-account is opened and funded by the executor (effect "fund"), then:
- funded {sid, trading_user}: the strategy trades from `trading_user` (its sub-account); the price
  known at create (journaled in create) is its first Tick;
- fund_failed {sid, why}: the transfer was refused: the strategy fails, nothing was placed;
- feed {src, last, items}: accounts events of source `src` (an accounts shard, "accounts-0" when
  absent) up to its sequence `last` (see services.quantizer.feed): fills and order states of the
  strategies' trading users, and trade prices (ticks) of their markets. A checkpoint per source:
  with accounts sharded by user each shard's stream is followed (a strategy's sub-account, and so
  its fills, is on its owner's shard; a trade's price comes from its taker's shard);
- rejected {sid, cid, why}: accounts refused a placement: Done(rejected) for that order;
- timer: a clock tick at the command's time (strategies whose wakeup() is due get a Timer);
- pause / resume / stop {sid, mode, slippage_ppm}; returned {sid, round}: the funds went back to the
  owner. A keep-orders stop leaves the strategy's open orders on the exchange (no longer managed) and
  returns what is free (round 0); their fills still reach the strategy's books, and once every kept
  order is done (filled, or canceled: a later stop with mode cancel or sell on the stopped strategy
  cancels them, and sells the base for mode sell) what they freed goes back too (round 1).

Fills reach the strategy by client order id: UserFill names only the order id, and accounts emits an
order's state (which carries the client order id) after the fills of the same settlement, so a fill of
an order id not seen yet waits (`pending`) for that state; trade prices wait too until no fill is
pending, so a strategy sees its fills before the price of the trade that made them (the order of a
backtest: counter order, fills, then Tick).

Intents that come out of apply are effects (Outcome.effects), executed after the journal write by
services.quantizer.executor with the deterministic client order id, so a resend is a duplicate.
Effects are not state: a restart rebuilds what is missing by reconciliation (executor.reconcile).

A paused strategy keeps its orders; the events for it are held and applied in order on resume (so
nothing is lost and nothing is placed while it is paused).
"""

from __future__ import annotations

import hashlib
import json
from bisect import bisect_left, bisect_right, insort
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from services.common.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound, Reason
from services.common.markets import MarketCatalog
from services.common.snapshot_codec import dumps_plain, loads_plain
from services.common.statemachine import CodecSpec, Outcome
from services.matching.model import BUY, DONE_CANCELED, DONE_EXPIRED, DONE_FILLED, DONE_REJECTED, SELL
from services.quantizer.core import (
    FAILED,
    STOP_CANCEL_AND_SELL,
    STOP_CANCEL_ORDERS,
    STOP_KEEP_ORDERS,
    STOPPED,
    Cancel,
    Done,
    Event,
    Fill,
    Intent,
    Place,
    S,
    Stop,
    Strategy,
    Tick,
    Timer,
)
from services.quantizer.params import restore_strategy, strategy_from_config

SNAPSHOT_VERSION: Final = 1
MAX_HELD: Final = 100_000  # events held for one paused strategy
DEFAULT_SOURCE: Final = "accounts-0"  # the accounts event source of a feed command without "src"
MAX_PENDING: Final = 100_000  # fills waiting for their order's state, all strategies

# OrderStatus (exchange.v1) -> done reason of a finished order
TERMINAL: Final = {4: DONE_FILLED, 5: DONE_CANCELED, 6: DONE_EXPIRED, 7: DONE_REJECTED}
ROLE_TAKER: Final = 2

# Phases of a strategy besides its own status
FUNDING: Final = "funding"
ACTIVE: Final = "active"
FUNDING_FAILED: Final = "funding_failed"


# --- effects (what the executor does once the command is durable) -----------------------------


@dataclass(frozen=True, slots=True)
class FundEffect:
    sid: int


@dataclass(frozen=True, slots=True)
class ReturnEffect:
    """Give the sub-account's available funds back to the owner: round 0 when the strategy stopped;
    round 1 once the orders a keep-orders stop left open are all done (their funds are free then)."""

    sid: int
    round: int = 0


@dataclass(frozen=True, slots=True)
class OrderEffect:
    """Place or cancel one order of strategy `sid` as `user` (its trading user). A market sell carries
    `limit_price`: it is placed as a limit IOC there (the slippage cap)."""

    sid: int
    user: int
    market: str
    intent: Intent
    limit_price: int = 0
    order_id: int = 0  # a cancel of an order by id (a stray without our client order id)


Effect = FundEffect | ReturnEffect | OrderEffect


# --- one strategy ------------------------------------------------------------------------------


class Entry:
    __slots__ = (
        "client_id",
        "config",
        "created",
        "held",
        "invest_base",
        "invest_quote",
        "kept",
        "limits",
        "market",
        "paused",
        "phase",
        "returned",
        "seen",
        "sid",
        "slippage_ppm",
        "start_price",
        "strategy",
        "trading_user",
        "updated",
        "user",
    )

    def __init__(
        self,
        sid: int,
        user: int,
        client_id: str,
        market: str,
        config: dict[str, Any],
        strategy: Strategy,
        *,
        start_price: int,
        invest_quote: int,
        invest_base: int,
        slippage_ppm: int,
        created: int,
    ) -> None:
        self.sid = sid
        self.user = user
        self.client_id = client_id
        self.market = market
        self.config = config
        self.strategy = strategy
        self.start_price = start_price
        self.invest_quote = invest_quote
        self.invest_base = invest_base
        self.slippage_ppm = slippage_ppm
        self.created = created
        self.updated = created
        self.phase = FUNDING
        self.trading_user = 0
        self.paused = False
        self.returned = False
        self.kept = False  # stopped with kept orders whose funds have not gone back yet (round 1)
        self.held: list[list[Any]] = []  # events held while paused (encoded)
        self.seen = 0  # the market's tick number this strategy's last price is from (see Bands)
        self.limits: dict[str, int] = {}  # cid -> limit price of a capped market sell

    @property
    def finished(self) -> bool:
        """Stopped or failed (no longer counts against the user's limits)."""
        return self.phase == FUNDING_FAILED or self.strategy.status in (STOPPED, FAILED)

    @property
    def funds_returned(self) -> bool:
        """Everything went back to the owner (both rounds)."""
        return self.returned and not self.kept

    @property
    def live(self) -> bool:
        """Takes events: funded, not finished (a stopped strategy still books its kept orders' fills)."""
        return self.phase == ACTIVE and self.strategy.status != FAILED

    def to_dict(self) -> dict[str, Any]:
        return {
            "sid": self.sid,
            "user": self.user,
            "client_id": self.client_id,
            "market": self.market,
            "config": self.config,
            "strategy": self.strategy.snapshot(),
            "start_price": self.start_price,
            "invest_quote": self.invest_quote,
            "invest_base": self.invest_base,
            "slippage_ppm": self.slippage_ppm,
            "created": self.created,
            "updated": self.updated,
            "phase": self.phase,
            "trading_user": self.trading_user,
            "paused": self.paused,
            "returned": self.returned,
            "kept": self.kept,
            "held": self.held,
            "limits": self.limits,
            "seen": self.seen,
        }

    @classmethod
    def from_dict(cls, catalog: MarketCatalog, d: dict[str, Any]) -> Entry:
        spec = catalog.markets[d["market"]]
        e = cls(
            int(d["sid"]),
            int(d["user"]),
            str(d["client_id"]),
            str(d["market"]),
            dict(d["config"]),
            restore_strategy(spec, d["strategy"]),
            start_price=int(d["start_price"]),
            invest_quote=int(d["invest_quote"]),
            invest_base=int(d["invest_base"]),
            slippage_ppm=int(d["slippage_ppm"]),
            created=int(d["created"]),
        )
        e.updated = int(d["updated"])
        e.phase = str(d["phase"])
        e.trading_user = int(d["trading_user"])
        e.paused = bool(d["paused"])
        e.returned = bool(d["returned"])
        e.kept = bool(d.get("kept", False))
        e.held = [list(x) for x in d["held"]]
        e.limits = {str(k): int(v) for k, v in d["limits"].items()}
        e.seen = int(d["seen"])
        return e


# --- events as plain data (held events, pending fills) -----------------------------------------


def encode_event(event: Event) -> list[Any]:
    if isinstance(event, Fill):
        return [
            "f",
            event.cid,
            event.trade_id,
            event.side,
            event.price,
            event.lots,
            event.quote_units,
            event.base_units,
            event.fee,
            event.time,
            event.maker,
        ]
    if isinstance(event, Done):
        return ["d", event.cid, event.reason, event.time]
    if isinstance(event, Tick):
        return ["k", event.price, event.time]
    if isinstance(event, Timer):
        return ["t", event.time]
    raise TypeError(f"cannot hold {event!r}")


def decode_event(row: list[Any]) -> Event:
    kind = row[0]
    if kind == "f":
        return Fill(
            str(row[1]),
            int(row[2]),
            int(row[3]),
            int(row[4]),
            int(row[5]),
            int(row[6]),
            int(row[7]),
            int(row[8]),
            int(row[9]),
            bool(row[10]),
        )
    if kind == "d":
        return Done(str(row[1]), int(row[2]), int(row[3]))
    if kind == "k":
        return Tick(int(row[1]), int(row[2]))
    if kind == "t":
        return Timer(int(row[1]))
    raise ValueError(f"unknown held event {row!r}")


# --- the codec ---------------------------------------------------------------------------------


def _encode(command: dict[str, Any], time_us: int) -> bytes:
    return json.dumps({**command, "time": time_us}, separators=(",", ":"), sort_keys=True).encode()


def _decode(record: bytes) -> tuple[dict[str, Any], int]:
    command = json.loads(record)
    return command, int(command.pop("time"))


CODEC: Final[CodecSpec[dict[str, Any]]] = CodecSpec(encode=_encode, decode=_decode)


# --- limits ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Limits:
    max_strategies: int = 20
    max_capital: Mapping[str, int] | None = None  # asset -> units


def client_prefix(sid: int) -> str:
    return f"q{sid}-"


def cid_owner(cid: str) -> int:
    """The strategy id in a quantizer client order id (q{sid}-{seq}-{tag}), 0 for another id."""
    if not cid.startswith("q"):
        return 0
    head = cid[1:].split("-", 1)[0]
    return int(head) if head.isdigit() else 0


# --- which strategies a price concerns -----------------------------------------------------------


class Bands:
    """The strategies of one market by tick band (Strategy.band: a price strictly inside changes only
    the last price). A tick is delivered to those whose band it leaves (lo >= price or hi <= price),
    found by bisection; the others take the price lazily (Entry.seen against the market's tick
    number) the next time they get an event or are read. Derived state: rebuilt on restore."""

    __slots__ = ("his", "los", "of")

    def __init__(self) -> None:
        self.los: list[tuple[int, int]] = []  # (lo, sid), sorted
        self.his: list[tuple[int, int]] = []  # (hi, sid), sorted
        self.of: dict[int, tuple[int, int]] = {}

    def set(self, sid: int, band: tuple[int, int] | None) -> None:
        old = self.of.get(sid)
        if old == band:
            return
        if old is not None:
            lo, hi = old
            del self.los[bisect_left(self.los, (lo, sid))]
            del self.his[bisect_left(self.his, (hi, sid))]
            del self.of[sid]
        if band is not None:
            lo, hi = band
            insort(self.los, (lo, sid))
            insort(self.his, (hi, sid))
            self.of[sid] = band

    def concerned(self, price: int) -> list[int]:
        """Strategy ids whose band `price` is not strictly inside, in order."""
        above = self.los[bisect_left(self.los, (price, -1)) :]
        below = self.his[: bisect_right(self.his, (price, 1 << 63))]
        if not below:
            return [sid for _, sid in above]
        if not above:
            return sorted(sid for _, sid in below)
        return sorted({sid for _, sid in above} | {sid for _, sid in below})


# --- the machine -------------------------------------------------------------------------------


class QuantizerMachine:
    def __init__(self, catalog: MarketCatalog, limits: Limits | None = None) -> None:
        self.catalog = catalog
        self.limits = limits or Limits()
        self._applied = 0
        self.next_sid = 1
        self.entries: dict[int, Entry] = {}
        self.by_client: dict[tuple[int, str], int] = {}
        self.by_trading: dict[int, int] = {}  # trading user -> sid (sub-accounts: one each)
        self.shared: dict[int, list[int]] = {}  # owner trading for several strategies (no sub-accounts)
        self.checkpoints: dict[str, int] = {}  # accounts source -> its last event sequence applied
        self.orders: dict[tuple[int, int], tuple[int, str]] = {}  # (user, order id) -> (sid, cid)
        self.pending: dict[tuple[int, int], list[list[Any]]] = {}  # fills waiting for their order's state
        self.deferred: list[list[Any]] = []  # ticks waiting until no fill is pending
        self.prices: dict[str, int] = {}  # last trade price seen per market (ticks)
        self.ticks: dict[str, list[int]] = {}  # market -> [tick number, price, time] of its last tick
        self.bands: dict[str, Bands] = {}  # derived (not in snapshots)
        self._trading: set[int] = set()  # derived: every trading user
        self._effects: list[Effect] = []

    # --- Machine protocol ------------------------------------------------------------------------

    @property
    def applied_seq(self) -> int:
        return self._applied

    @property
    def event_seq(self) -> int:
        return 0

    def apply(self, seq: int, time_us: int, command: dict[str, Any]) -> Outcome:
        kind = command.get("t")
        handler = self._HANDLERS.get(kind) if isinstance(kind, str) else None
        if handler is None:
            raise InvalidArgument(f"unknown quantizer command {kind!r}", Reason.INVALID_FIELD)
        self._effects = []
        result, changed = handler(self, command, time_us)
        if not changed:
            if self._effects:
                raise RuntimeError("a command that changes nothing produced effects")
            return Outcome(result=result, journal=False)
        self._applied = seq
        effects, self._effects = self._effects, []
        return Outcome(result=result, effects=effects)

    def snapshot(self) -> bytes:
        return dumps_plain(self._state())

    def state_hash(self) -> str:
        return hashlib.sha256(json.dumps(self._state(), sort_keys=True).encode()).hexdigest()

    def _state(self) -> dict[str, Any]:
        return {
            "version": SNAPSHOT_VERSION,
            "applied": self._applied,
            "next_sid": self.next_sid,
            "checkpoints": sorted(self.checkpoints.items()),
            "entries": [self.entries[sid].to_dict() for sid in sorted(self.entries)],
            "orders": sorted([u, o, sid, cid] for (u, o), (sid, cid) in self.orders.items()),
            "pending": sorted([[u, o, rows] for (u, o), rows in self.pending.items()]),
            "deferred": self.deferred,
            "prices": dict(sorted(self.prices.items())),
            "ticks": dict(sorted(self.ticks.items())),
        }

    @classmethod
    def restore(cls, catalog: MarketCatalog, limits: Limits | None, data: bytes | None) -> QuantizerMachine:
        m = cls(catalog, limits)
        if data is None:
            return m
        state = loads_plain(data)
        if state.get("version") != SNAPSHOT_VERSION:
            raise ValueError(f"unknown quantizer snapshot version {state.get('version')!r}")
        m._applied = int(state["applied"])
        m.next_sid = int(state["next_sid"])
        if "checkpoints" in state:
            m.checkpoints = {str(k): int(v) for k, v in state["checkpoints"]}
        elif int(state.get("checkpoint", 0)):  # before accounts shards: the one source
            m.checkpoints = {DEFAULT_SOURCE: int(state["checkpoint"])}
        for d in state["entries"]:
            e = Entry.from_dict(catalog, d)
            m._index(e)
        m.orders = {(int(u), int(o)): (int(sid), str(cid)) for u, o, sid, cid in state["orders"]}
        m.pending = {(int(u), int(o)): [list(r) for r in rows] for u, o, rows in state["pending"]}
        m.deferred = [list(r) for r in state["deferred"]]
        m.prices = {str(k): int(v) for k, v in state["prices"].items()}
        m.ticks = {str(k): [int(x) for x in v] for k, v in state["ticks"].items()}
        for e in m.entries.values():
            m._reband(e)
        return m

    def _index(self, e: Entry) -> None:
        self.entries[e.sid] = e
        if e.client_id:
            self.by_client[(e.user, e.client_id)] = e.sid
        if e.trading_user:
            self._register_trading(e)

    def _register_trading(self, e: Entry) -> None:
        self._trading.add(e.trading_user)
        if e.trading_user == e.user:
            self.shared.setdefault(e.user, [])
            if e.sid not in self.shared[e.user]:
                self.shared[e.user].append(e.sid)
        else:
            self.by_trading[e.trading_user] = e.sid

    # --- queries (edge and executor) -------------------------------------------------------------

    def get(self, sid: int) -> Entry:
        e = self.entries.get(sid)
        if e is None:
            raise NotFound(f"no strategy {sid}", Reason.STRATEGY_NOT_FOUND)
        return e

    def trading_users(self) -> set[int]:
        """The trading users of the strategies (read only; kept up to date by the machine)."""
        return self._trading

    def live_markets(self) -> set[str]:
        return {market for market, bands in self.bands.items() if bands.of}

    def user_entries(self, user: int) -> list[Entry]:
        return [self.entries[sid] for sid in sorted(self.entries) if self.entries[sid].user == user]

    def next_wakeup(self) -> int | None:
        best: int | None = None
        for e in self.entries.values():
            if not e.live or e.paused:
                continue
            w = e.strategy.wakeup()
            if w is not None and (best is None or w < best):
                best = w
        return best

    def sid_of_order(self, user: int, cid: str) -> int:
        """The strategy trading as `user` that owns client order id `cid` (0: none)."""
        sid = self.by_trading.get(user)
        if sid is not None:
            return sid
        owner = cid_owner(cid)
        if owner and owner in self.shared.get(user, ()):
            return owner
        return 0

    # --- commands --------------------------------------------------------------------------------

    def _create(self, c: dict[str, Any], now: int) -> tuple[Any, bool]:
        user = int(c["user"])
        client_id = str(c.get("client_id", ""))
        market = str(c["market"])
        config = dict(c["config"])
        if client_id:
            known = self.by_client.get((user, client_id))
            if known is not None:
                e = self.entries[known]
                if e.market != market or e.config != config:
                    raise AlreadyExists(
                        f"client_strategy_id {client_id!r} already names strategy {known} with other "
                        "parameters",
                        Reason.IDEMPOTENCY_KEY_REUSED,
                        {"strategy_id": str(known)},
                    )
                return (known, True), False
        spec = self.catalog.markets.get(market)
        if spec is None:
            raise InvalidArgument(f"unknown market {market!r}", Reason.UNKNOWN_MARKET)
        sid = self.next_sid
        strategy = strategy_from_config(spec, sid, config)  # validates (InvalidArgument)
        invest_quote = strategy.account.invested_quote
        invest_base = strategy.account.invested_base
        mine = [e for e in self.entries.values() if e.user == user and not e.finished]
        if len(mine) >= self.limits.max_strategies:
            raise FailedPrecondition(
                f"user {user} already runs {len(mine)} strategies, the limit", Reason.STRATEGY_LIMIT_EXCEEDED
            )
        caps = self.limits.max_capital or {}
        for asset, amount in ((spec.quote, invest_quote), (spec.base, invest_base)):
            cap = caps.get(asset.symbol)
            if cap is None or not amount:
                continue
            used = sum(
                (e.invest_quote if self.catalog.markets[e.market].quote.symbol == asset.symbol else 0)
                + (e.invest_base if self.catalog.markets[e.market].base.symbol == asset.symbol else 0)
                for e in mine
            )
            if used + amount > cap:
                raise FailedPrecondition(
                    f"capital in strategies would be {asset.format(used + amount)} {asset.symbol}, above "
                    f"the limit {asset.format(cap)} {asset.symbol}",
                    Reason.STRATEGY_LIMIT_EXCEEDED,
                )
        slippage = int(c.get("slippage_ppm", 0))
        if not 0 <= slippage < S:
            raise InvalidArgument("slippage must be below 100 %", Reason.VALUE_OUT_OF_RANGE)
        e = Entry(
            sid,
            user,
            client_id,
            market,
            config,
            strategy,
            start_price=int(c.get("price", 0)),
            invest_quote=invest_quote,
            invest_base=invest_base,
            slippage_ppm=slippage,
            created=now,
        )
        self.next_sid = sid + 1
        self._index(e)
        self._effects.append(FundEffect(sid))
        return (sid, False), True

    def _funded(self, c: dict[str, Any], now: int) -> tuple[Any, bool]:
        e = self.get(int(c["sid"]))
        if e.phase != FUNDING:
            return e.sid, False
        e.phase = ACTIVE
        e.trading_user = int(c["trading_user"])
        e.updated = now
        self._register_trading(e)
        self._reband(e)
        if e.strategy.status == STOPPED:  # stopped while being funded: give everything back
            if e.trading_user != e.user:
                self._effects.append(ReturnEffect(e.sid))
            else:
                e.returned = True
            return e.sid, True
        price = e.start_price or self.prices.get(e.market, 0)
        if price:
            self._deliver(e, Tick(price, now))
        return e.sid, True

    def _fund_failed(self, c: dict[str, Any], now: int) -> tuple[Any, bool]:
        e = self.get(int(c["sid"]))
        if e.phase != FUNDING:
            return e.sid, False
        e.phase = FUNDING_FAILED
        e.strategy.status = FAILED
        e.strategy.failure = str(c.get("why", ""))[:256]
        e.trading_user = int(c.get("trading_user", 0))
        e.updated = now
        self._reband(e)
        if e.trading_user and e.trading_user != e.user:
            self._register_trading(e)
            self._effects.append(ReturnEffect(e.sid))  # whatever did arrive goes back
        else:
            e.returned = True
        return e.sid, True

    def _returned(self, c: dict[str, Any], now: int) -> tuple[Any, bool]:
        e = self.get(int(c["sid"]))
        if int(c.get("round", 0)) == 1:
            if not e.kept or e.strategy.orders:
                return e.sid, False
            e.kept = False
        elif e.returned:
            return e.sid, False
        else:
            e.returned = True
            if e.kept and not e.strategy.orders:  # the kept orders were done before round 0 was
                self._effects.append(ReturnEffect(e.sid, round=1))
        e.updated = now
        return e.sid, True

    def _rejected(self, c: dict[str, Any], now: int) -> tuple[Any, bool]:
        e = self.get(int(c["sid"]))
        cid = str(c["cid"])
        if cid not in e.strategy.orders:
            return e.sid, False
        self._deliver(e, Done(cid, DONE_REJECTED, now))
        e.updated = now
        return e.sid, True

    def _pause(self, c: dict[str, Any], now: int) -> tuple[Any, bool]:
        e = self.get(int(c["sid"]))
        if e.finished:
            raise FailedPrecondition(
                f"strategy {e.sid} is {self.state_name(e)}", Reason.STRATEGY_STATE_CONFLICT
            )
        if e.paused:
            return e.sid, False
        e.paused = True
        e.updated = now
        self._reband(e)
        return e.sid, True

    def _resume(self, c: dict[str, Any], now: int) -> tuple[Any, bool]:
        e = self.get(int(c["sid"]))
        if e.finished:
            raise FailedPrecondition(
                f"strategy {e.sid} is {self.state_name(e)}", Reason.STRATEGY_STATE_CONFLICT
            )
        if not e.paused:
            return e.sid, False
        e.paused = False
        e.updated = now
        held, e.held = e.held, []
        for row in held:
            self._deliver(e, decode_event(row))
        self._reband(e)
        return e.sid, True

    def _stop(self, c: dict[str, Any], now: int) -> tuple[Any, bool]:
        e = self.get(int(c["sid"]))
        mode = int(c["mode"])
        if mode not in (STOP_KEEP_ORDERS, STOP_CANCEL_ORDERS, STOP_CANCEL_AND_SELL):
            raise InvalidArgument(
                "mode must be keep orders, cancel orders or cancel and sell", Reason.INVALID_FIELD
            )
        s = e.strategy
        # a stopped strategy whose kept orders are still open: mode cancel / sell releases them
        release = s.status == STOPPED and bool(s.orders) and mode != STOP_KEEP_ORDERS and e.phase == ACTIVE
        if (e.finished and not release) or s.status == "stopping":
            return e.sid, False
        slippage = int(c.get("slippage_ppm", e.slippage_ppm))
        if not 0 <= slippage < S:
            raise InvalidArgument("max_slippage must be below 100 %", Reason.VALUE_OUT_OF_RANGE)
        e.slippage_ppm = slippage
        e.updated = now
        if e.phase == FUNDING:
            # Not funded yet: the funding step sees the stop and gives everything back.
            e.strategy.status = STOPPED
            e.strategy.stop_reason = "user"
            return e.sid, True
        if e.paused:  # apply what was held first, then stop
            e.paused = False
            held, e.held = e.held, []
            for row in held:
                self._deliver(e, decode_event(row))
        self._deliver(e, Stop(mode, now))
        return e.sid, True

    def _timer(self, c: dict[str, Any], now: int) -> tuple[Any, bool]:
        changed = False
        for sid in sorted(self.entries):
            e = self.entries[sid]
            if not e.live or e.paused:
                continue
            w = e.strategy.wakeup()
            if w is not None and w <= now:
                self._deliver(e, Timer(now))
                changed = True
        return None, changed

    def _sync(self, c: dict[str, Any], now: int) -> tuple[Any, bool]:
        return self._applied, False

    def checkpoint_of(self, source: str = DEFAULT_SOURCE) -> int:
        """The last event sequence of accounts source `source` applied (0: none yet)."""
        return self.checkpoints.get(source, 0)

    def _feed(self, c: dict[str, Any], now: int) -> tuple[Any, bool]:
        source = str(c.get("src", DEFAULT_SOURCE))
        last = int(c["last"])
        checkpoint = self.checkpoints.get(source, 0)
        if last <= checkpoint:
            return checkpoint, False
        for item in c["items"]:
            if int(item[1]) <= checkpoint:
                continue
            kind = item[0]
            if kind == "f":
                self._fill_item(item)
            elif kind == "o":
                self._order_item(item)
            elif kind == "k":
                self._tick_item(item)
            if self.deferred and not self.pending:
                self._flush_ticks()
        self.checkpoints[source] = last
        return last, True

    _HANDLERS: Final[dict[str, Any]] = {
        "create": _create,
        "funded": _funded,
        "fund_failed": _fund_failed,
        "returned": _returned,
        "rejected": _rejected,
        "pause": _pause,
        "resume": _resume,
        "stop": _stop,
        "timer": _timer,
        "feed": _feed,
        "sync": _sync,
    }

    # --- feed items ------------------------------------------------------------------------------
    # ["f", seq, user, order_id, trade_id, side, role, price, lots, quote_units, fee, time]
    # ["o", seq, user, order_id, cid, status, time]
    # ["k", seq, market, price, trade_id, time]

    def _fill_item(self, item: list[Any]) -> None:
        user, order_id = int(item[2]), int(item[3])
        known = self.orders.get((user, order_id))
        if known is None:
            if sum(len(v) for v in self.pending.values()) < MAX_PENDING:
                self.pending.setdefault((user, order_id), []).append(item)
            return
        self._fill_to(known[0], known[1], item)

    def _fill_to(self, sid: int, cid: str, item: list[Any]) -> None:
        e = self.entries.get(sid)
        if e is None:
            return
        spec = e.strategy.spec
        side = int(item[5])
        lots = int(item[8])
        fill = Fill(
            cid,
            int(item[4]),
            side,
            int(item[7]),
            lots,
            int(item[9]),
            lots * spec.base_units_per_lot,
            int(item[10]),
            int(item[11]),
            int(item[6]) != ROLE_TAKER,
        )
        self._deliver(e, fill)

    def _order_item(self, item: list[Any]) -> None:
        user, order_id, cid, status, t = int(item[2]), int(item[3]), str(item[4]), int(item[5]), int(item[6])
        sid = self.sid_of_order(user, cid) if cid else 0
        waiting = self.pending.pop((user, order_id), None)
        if not sid:
            return  # not a strategy's order (the owner's own, in shared mode): its fills are dropped
        self.orders[(user, order_id)] = (sid, cid)
        for row in waiting or ():
            self._fill_to(sid, cid, row)
        done = TERMINAL.get(status)
        if done is not None:
            del self.orders[(user, order_id)]
            e = self.entries.get(sid)
            if e is not None:
                self._deliver(e, Done(cid, done, t))

    def _tick_item(self, item: list[Any]) -> None:
        market, price = str(item[2]), int(item[3])
        self.prices[market] = price
        if self.pending:
            self.deferred.append(item)
        else:
            self._tick(market, price, int(item[5]))

    def _flush_ticks(self) -> None:
        deferred, self.deferred = self.deferred, []
        for item in deferred:
            self._tick(str(item[2]), int(item[3]), int(item[5]))

    def _tick(self, market: str, price: int, t: int) -> None:
        tick = self.ticks.get(market)
        n = tick[0] + 1 if tick is not None else 1
        self.ticks[market] = [n, price, t]
        bands = self.bands.get(market)
        if bands is None:
            return
        for sid in bands.concerned(price):
            self._deliver(self.entries[sid], Tick(price, t))

    def _catch_up(self, e: Entry) -> None:
        """Give a strategy the price of the ticks its band let pass (only the last price changes)."""
        tick = self.ticks.get(e.market)
        if tick is None or e.seen >= tick[0]:
            return
        s = e.strategy
        s.last_price = tick[1]
        if tick[2] > s.last_time:
            s.last_time = tick[2]
        e.seen = tick[0]

    def _band(self, e: Entry) -> tuple[int, int] | None:
        if not e.live:
            return None
        s = e.strategy
        if e.paused or s.account.unvalued_base or s.account.start_time < 0:
            return (0, 0)  # every tick
        return s.band()

    def _reband(self, e: Entry) -> None:
        bands = self.bands.get(e.market)
        if bands is None:
            bands = self.bands[e.market] = Bands()
        bands.set(e.sid, self._band(e))

    def market_price(self, e: Entry) -> tuple[int, int]:
        """(last price, time) for a report of `e`: the market's last tick if the strategy's band let it
        pass (read only: the state takes it at the strategy's next event)."""
        s = e.strategy
        tick = self.ticks.get(e.market)
        if tick is None or e.seen >= tick[0]:
            return s.last_price, s.last_time
        return tick[1], max(s.last_time, tick[2])

    # --- delivering ------------------------------------------------------------------------------

    def _deliver(self, e: Entry, event: Event) -> None:
        if e.paused and not isinstance(event, Stop):
            if isinstance(event, Tick) and e.held and e.held[-1][0] == "k":
                e.held[-1] = encode_event(event)  # only the latest price matters
            elif len(e.held) < MAX_HELD:
                e.held.append(encode_event(event))
            return
        self._catch_up(e)
        s = e.strategy
        was = s.status
        had_orders = bool(s.orders)
        intents = s.apply(event)
        if isinstance(event, Tick):
            tick = self.ticks.get(e.market)
            if tick is not None:
                e.seen = tick[0]
        for intent in intents:
            limit = 0
            if isinstance(intent, Place) and intent.is_market and intent.side == SELL:
                ref = s.last_price or self.prices.get(e.market, 0)
                if ref:
                    limit = max(1, ref * (S - e.slippage_ppm) // S)
                    e.limits[intent.cid] = limit
            self._effects.append(OrderEffect(e.sid, e.trading_user, e.market, intent, limit))
        if isinstance(event, Done):
            e.limits.pop(event.cid, None)
        if s.status != was:
            e.updated = max(e.updated, s.last_time)
        own_account = bool(e.trading_user) and e.trading_user != e.user
        # round 0 when it first stops (e.kept: it stopped before, keeping orders, released since)
        if s.status in (STOPPED, FAILED) and not e.returned and not e.kept and was not in (STOPPED, FAILED):
            if own_account:
                self._effects.append(ReturnEffect(e.sid))
                e.kept = s.status == STOPPED and bool(s.orders)
            else:
                e.returned = True
        elif e.kept and e.returned and s.status == STOPPED and had_orders and not s.orders and own_account:
            self._effects.append(ReturnEffect(e.sid, round=1))  # the last kept order is done
        self._reband(e)

    # --- views -----------------------------------------------------------------------------------

    @staticmethod
    def state_name(e: Entry) -> str:
        """paused / funding / funding_failed, else the strategy's own status."""
        if e.phase == FUNDING_FAILED:
            return "failed"
        if e.paused:
            return "paused"
        if e.phase == FUNDING and e.strategy.status != STOPPED:
            return FUNDING
        return e.strategy.status


def place_of(order_row: Any) -> Place:
    """The Place intent that created an order of a strategy's table (a resend after a restart)."""
    return Place(order_row.cid, order_row.side, order_row.price, order_row.lots, order_row.budget)


def cancel_of(cid: str) -> Cancel:
    return Cancel(cid)


__all__ = [
    "ACTIVE",
    "BUY",
    "CODEC",
    "FUNDING",
    "FUNDING_FAILED",
    "SELL",
    "Effect",
    "Entry",
    "FundEffect",
    "Limits",
    "OrderEffect",
    "QuantizerMachine",
    "ReturnEffect",
    "cid_owner",
    "client_prefix",
]

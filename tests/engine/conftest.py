"""Shared helpers of the matching-engine tests.

- market specs from deploy/exchange.toml (BTC_USDT: 10 quote units per tick x lot, 1000 base units per lot;
  ETH_USDT: 100 and 10000), so every test exercises the real integer scales;
- `ev`/`evs`: events as plain tuples (an OrderDone carries its order's full `state()`), taken right after
  the command so a later mutation of an Order cannot hide;
- builders for commands and for the events a test expects;
- `BookDriver`: an OrderBook plus a clock;
- `RefBook`/`RefEngine`: a naive reference implementation (a flat dict of orders, sorted on every look-up)
  whose full event stream the property tests compare with the real engine's;
- `Settlement`: replays events as a risk/settlement layer would (holds per order, balances per user and
  asset, a fee account) and checks that every hold is exactly used up when its order is done.

Only the model's value types (commands, events, Order as a record) are shared with the code under test.
"""

from __future__ import annotations

import tomllib
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from services.common.markets import Asset, MarketCatalog, MarketSpec
from services.matching.book import OrderBook
from services.matching.engine import Applied
from services.matching.model import (
    BUY,
    DETAIL_CANCEL_ALL,
    DETAIL_EXPIRE_TIME,
    DETAIL_FOK_NOT_FILLABLE,
    DETAIL_INVALID,
    DETAIL_IOC_REMAINDER,
    DETAIL_NO_LIQUIDITY,
    DETAIL_NONE,
    DETAIL_POST_ONLY_WOULD_TAKE,
    DETAIL_REDUCED_TO_ZERO,
    DETAIL_SELF_TRADE,
    DETAIL_USER_CANCEL,
    DONE_CANCELED,
    DONE_EXPIRED,
    DONE_FILLED,
    DONE_REJECTED,
    FOK,
    GTC,
    GTD,
    IOC,
    LIMIT,
    MARKET,
    REJECT_INVALID,
    REJECT_NOT_OWNER,
    REJECT_ORDER_NOT_FOUND,
    REJECT_POST_ONLY_WOULD_TAKE,
    REJECT_UNKNOWN_MARKET,
    SELL,
    STP_CANCEL_BOTH,
    STP_CANCEL_TAKER,
    CancelAll,
    CancelOrder,
    Command,
    CommandRejected,
    Event,
    ExpireOrders,
    MoveOrder,
    Order,
    OrderAccepted,
    OrderAmended,
    OrderDone,
    PlaceOrder,
    ReduceOrder,
    TradeExecuted,
)

ROOT = Path(__file__).resolve().parents[2]

with open(ROOT / "deploy" / "exchange.toml", "rb") as _f:
    CATALOG = MarketCatalog.from_dict(tomllib.load(_f))

BTC_USDT = CATALOG.market("BTC_USDT")
ETH_USDT = CATALOG.market("ETH_USDT")
BTC = "BTC_USDT"
ETH = "ETH_USDT"
FEE_ACCOUNT = 0  # user id the settlement replay credits fees to
T0 = 1_000_000  # default command time (microseconds)

# A toy market with 1:1 scales, for tests where the arithmetic should be readable.
UNIT_SPEC = MarketSpec.create("A_Q", Asset("A", 0), Asset("Q", 0), price_tick="1", lot_size="1")


# --- events as plain tuples ---------------------------------------------------------------------


def cmd_tuple(c: PlaceOrder) -> tuple[Any, ...]:
    return (
        c.order_id,
        c.user_id,
        c.market,
        c.side,
        c.type,
        c.tif,
        c.price,
        c.amount,
        c.quote_budget,
        c.post_only,
        c.stp,
        c.expire_at,
        c.maker_fee_ppm,
        c.taker_fee_ppm,
    )


def ev(e: Event) -> tuple[Any, ...]:
    """One event as a plain tuple (CommandRejected's free-text message is left out)."""
    if isinstance(e, OrderAccepted):
        return ("accepted", cmd_tuple(e.order))
    if isinstance(e, TradeExecuted):
        return (
            "trade",
            e.trade_id,
            e.price,
            e.amount,
            e.quote_units,
            e.base_units,
            e.taker_side,
            e.taker_order_id,
            e.taker_user_id,
            e.maker_order_id,
            e.maker_user_id,
            e.taker_fee,
            e.maker_fee,
            e.taker_remaining,
            e.maker_remaining,
            e.taker_price,
            e.taker_remaining_budget,
        )
    if isinstance(e, OrderAmended):
        return (
            "amended",
            e.order_id,
            e.user_id,
            e.side,
            e.price,
            e.amount,
            e.remaining,
            e.old_price,
            e.old_remaining,
            e.priority_kept,
        )
    if isinstance(e, OrderDone):
        return ("done", e.order.order_id, e.reason, e.detail, e.order.state())
    if isinstance(e, CommandRejected):
        return ("rejected", e.order_id, e.user_id, e.reason)
    raise AssertionError(f"not an event: {e!r}")


def evs(events: Iterable[Event]) -> list[tuple[Any, ...]]:
    return [ev(e) for e in events]


def applied_tuples(applied: list[Applied]) -> list[tuple[Any, ...]]:
    """MatchingEngine.apply's result as (market, event tuple) pairs in emission order."""
    return [(a.market, ev(e)) for a in applied for e in a.events]


# --- command builders ---------------------------------------------------------------------------


def lim(
    order_id: int,
    user: int,
    side: int,
    price: int,
    amount: int,
    tif: int = GTC,
    *,
    market: str = BTC,
    **kw: Any,
) -> PlaceOrder:
    return PlaceOrder(order_id, user, market, side, LIMIT, tif, price, amount, **kw)


def mbuy(order_id: int, user: int, budget: int, *, market: str = BTC, **kw: Any) -> PlaceOrder:
    return PlaceOrder(order_id, user, market, BUY, MARKET, IOC, quote_budget=budget, **kw)


def msell(order_id: int, user: int, amount: int, *, market: str = BTC, **kw: Any) -> PlaceOrder:
    return PlaceOrder(order_id, user, market, SELL, MARKET, IOC, amount=amount, **kw)


# --- expected events ----------------------------------------------------------------------------


def order_at(
    cmd: PlaceOrder,
    created: int = T0,
    *,
    remaining: int | None = None,
    filled: int = 0,
    filled_quote: int = 0,
    budget: int | None = None,
    price: int | None = None,
    amount: int | None = None,
) -> Order:
    """The Order record an OrderDone is expected to carry."""
    o = Order(cmd, created)
    o.amount = cmd.amount if amount is None else amount
    o.remaining = o.amount - filled if remaining is None else remaining
    o.filled = filled
    o.filled_quote = filled_quote
    o.budget = cmd.quote_budget if budget is None else budget
    o.price = cmd.price if price is None else price
    return o


def done(cmd: PlaceOrder, reason: int, detail: int, created: int = T0, **kw: Any) -> OrderDone:
    return OrderDone(order_at(cmd, created, **kw), reason, detail)


def trade(
    trade_id: int,
    price: int,
    lots: int,
    taker: PlaceOrder,
    maker: PlaceOrder,
    taker_remaining: int,
    maker_remaining: int,
    *,
    spec: MarketSpec = BTC_USDT,
    taker_fee: int = 0,
    maker_fee: int = 0,
    taker_price: int | None = None,
    budget: int = 0,
) -> TradeExecuted:
    return TradeExecuted(
        trade_id,
        price,
        lots,
        price * lots * spec.quote_units_per_tick_lot,
        lots * spec.base_units_per_lot,
        taker.side,
        taker.order_id,
        taker.user_id,
        maker.order_id,
        maker.user_id,
        taker_fee,
        maker_fee,
        taker_remaining,
        maker_remaining,
        taker.price if taker_price is None else taker_price,
        budget,
    )


def rejected(order_id: int, user: int, reason: int) -> CommandRejected:
    return CommandRejected(order_id, user, reason, "")


# --- a book with a clock --------------------------------------------------------------------------


class BookDriver:
    def __init__(self, spec: MarketSpec = BTC_USDT, now: int = T0) -> None:
        self.book = OrderBook(spec)
        self.now = now

    def _t(self, now: int | None) -> int:
        if now is not None:
            self.now = now
        return self.now

    def place(self, cmd: PlaceOrder, now: int | None = None) -> list[Event]:
        out: list[Event] = []
        self.book.place(cmd, self._t(now), out)
        return out

    def cancel(self, order_id: int, user: int, now: int | None = None) -> list[Event]:
        out: list[Event] = []
        self.book.cancel(order_id, user, self._t(now), out)
        return out

    def cancel_all(self, user: int, side: int = 0, now: int | None = None) -> list[Event]:
        out: list[Event] = []
        self.book.cancel_all(user, side, self._t(now), out)
        return out

    def reduce(self, order_id: int, user: int, new_amount: int, now: int | None = None) -> list[Event]:
        out: list[Event] = []
        self.book.reduce(order_id, user, new_amount, self._t(now), out)
        return out

    def move(self, order_id: int, user: int, new_price: int, now: int | None = None) -> list[Event]:
        out: list[Event] = []
        self.book.move(order_id, user, new_price, self._t(now), out)
        return out

    def expire(self, now: int | None = None) -> list[Event]:
        out: list[Event] = []
        self.book.expire(self._t(now), out)
        return out

    def placed(self, *cmds: PlaceOrder) -> None:
        """Place orders that must simply rest (asserts it)."""
        for c in cmds:
            assert evs(self.place(c)) == evs([OrderAccepted(c)]), c

    def l2(self, limit: int = 1000, merge: int = 1) -> tuple[list[tuple[int, int, int]], ...]:
        return self.book.depth(limit, merge)

    def l3(self, side: int) -> list[tuple[int, int, int]]:
        """(order id, price, remaining) in priority order."""
        return [(o.order_id, o.price, o.remaining) for o in self.book.iter_orders(side)]

    def view(self) -> tuple[Any, ...]:
        """Everything observable about the book (for "unchanged" assertions)."""
        return (
            self.l2(),
            [o.state() for o in self.book.iter_orders(BUY)],
            [o.state() for o in self.book.iter_orders(SELL)],
            self.book.next_trade_id,
            self.book.state_hash(),
            len(self.book),
        )


# --- the reference book ---------------------------------------------------------------------------


def _ceil_fee(units: int, rate_ppm: int) -> int:
    return (units * rate_ppm + 999_999) // 1_000_000


class RefBook:
    """A deliberately naive book with the documented semantics: all live orders in one dict, an
    arrival counter for time priority, a sort on every look-up. Slow and obviously correct."""

    def __init__(self, spec: MarketSpec) -> None:
        self.spec = spec
        self.live: dict[int, Order] = {}
        self.arrival: dict[int, int] = {}
        self.counter = 0
        self.next_trade_id = 1

    # queries
    def side_orders(self, side: int) -> list[Order]:
        orders = [o for o in self.live.values() if o.side == side]
        if side == BUY:
            orders.sort(key=lambda o: (-o.price, self.arrival[o.order_id]))
        else:
            orders.sort(key=lambda o: (o.price, self.arrival[o.order_id]))
        return orders

    def best(self, side: int) -> int | None:
        orders = self.side_orders(side)
        return orders[0].price if orders else None

    def depth(self) -> tuple[list[tuple[int, int, int]], list[tuple[int, int, int]]]:
        result = []
        for side in (BUY, SELL):
            levels: dict[int, list[int]] = {}
            for o in self.side_orders(side):
                lv = levels.setdefault(o.price, [0, 0])
                lv[0] += o.remaining
                lv[1] += 1
            result.append([(p, t, n) for p, (t, n) in levels.items()])
        return result[0], result[1]

    # helpers
    def _rest(self, o: Order) -> None:
        self.counter += 1
        self.live[o.order_id] = o
        self.arrival[o.order_id] = self.counter

    def _remove(self, o: Order) -> None:
        del self.live[o.order_id]
        del self.arrival[o.order_id]

    def _expire_due(self, now: int, out: list[Event]) -> None:
        due = [o for o in self.live.values() if 0 < o.cmd.expire_at <= now]
        for o in sorted(due, key=lambda o: (o.cmd.expire_at, o.order_id)):
            self._remove(o)
            out.append(OrderDone(o, DONE_EXPIRED, DETAIL_EXPIRE_TIME))

    @staticmethod
    def _valid(c: PlaceOrder, now: int) -> bool:
        if c.side not in (BUY, SELL):
            return False
        if c.type == LIMIT:
            if c.price <= 0 or c.amount <= 0:
                return False
            if c.tif == GTD:
                return c.expire_at > now
            return c.tif in (GTC, IOC, FOK) and c.expire_at == 0
        if c.type == MARKET:
            if c.post_only or c.expire_at or c.tif not in (GTC, IOC):
                return False
            if c.side == BUY:  # by budget (amount 0) or by amount within a budget
                return c.quote_budget > 0 and c.amount >= 0
            return c.amount > 0
        return False

    @staticmethod
    def _crosses(side: int, price: int, best: int | None) -> bool:
        return best is not None and (price >= best if side == BUY else price <= best)

    def _fillable(self, o: Order) -> bool:
        need = o.remaining
        stops = o.cmd.stp in (STP_CANCEL_TAKER, STP_CANCEL_BOTH)
        for m in self.side_orders(SELL if o.side == BUY else BUY):
            if not self._crosses(o.side, o.price, m.price):
                return False
            if m.user_id == o.user_id:
                if stops:
                    return False
                continue
            need -= m.remaining
            if need <= 0:
                return True
        return False

    def _match(self, t: Order, out: list[Event]) -> bool:
        """True when self-trade prevention canceled the taker."""
        qptl = self.spec.quote_units_per_tick_lot
        by_budget = t.cmd.type == MARKET and t.side == BUY
        by_amount = by_budget and t.amount > 0  # both limits: the amount and the budget
        opposite = SELL if t.side == BUY else BUY
        while (by_budget and not by_amount) or t.remaining > 0:
            makers = self.side_orders(opposite)
            if not makers:
                return False
            m = makers[0]
            if t.cmd.type != MARKET and not self._crosses(t.side, t.price, m.price):
                return False
            affordable = t.budget // (m.price * qptl) if by_budget else 0
            if by_amount:
                affordable = min(affordable, t.remaining)
            if by_budget and affordable == 0:
                return False
            if m.user_id == t.user_id:
                stp = t.cmd.stp
                if stp in (STP_CANCEL_TAKER, STP_CANCEL_BOTH):
                    if stp == STP_CANCEL_BOTH:
                        self._remove(m)
                        out.append(OrderDone(m, DONE_CANCELED, DETAIL_SELF_TRADE))
                    out.append(OrderDone(t, DONE_CANCELED, DETAIL_SELF_TRADE))
                    return True
                self._remove(m)
                out.append(OrderDone(m, DONE_CANCELED, DETAIL_SELF_TRADE))
                continue
            lots = min(m.remaining, affordable if by_budget else t.remaining)
            quote = m.price * lots * qptl
            base = lots * self.spec.base_units_per_lot
            buyer_units, seller_units = base, quote  # each side pays its fee in what it receives
            if t.side == BUY:
                t_fee = _ceil_fee(buyer_units, t.cmd.taker_fee_ppm)
                m_fee = _ceil_fee(seller_units, m.cmd.maker_fee_ppm)
            else:
                t_fee = _ceil_fee(seller_units, t.cmd.taker_fee_ppm)
                m_fee = _ceil_fee(buyer_units, m.cmd.maker_fee_ppm)
            m.remaining -= lots
            m.filled += lots
            m.filled_quote += quote
            t.filled += lots
            t.filled_quote += quote
            if by_budget:
                t.budget -= quote
            if not by_budget or by_amount:
                t.remaining -= lots
            out.append(
                TradeExecuted(
                    self.next_trade_id,
                    m.price,
                    lots,
                    quote,
                    base,
                    t.side,
                    t.order_id,
                    t.user_id,
                    m.order_id,
                    m.user_id,
                    t_fee,
                    m_fee,
                    t.remaining,
                    m.remaining,
                    t.price,
                    t.budget,
                )
            )
            self.next_trade_id += 1
            if m.remaining == 0:
                self._remove(m)
                out.append(OrderDone(m, DONE_FILLED, DETAIL_NONE))
        return False

    # commands
    def place(self, c: PlaceOrder, now: int, out: list[Event]) -> None:
        self._expire_due(now, out)
        out.append(OrderAccepted(c))
        if c.order_id in self.live:
            out.append(CommandRejected(c.order_id, c.user_id, REJECT_INVALID, ""))
            return
        o = Order(c, now)
        if not self._valid(c, now):
            if c.tif == GTD and 0 < c.expire_at <= now:
                out.append(OrderDone(o, DONE_EXPIRED, DETAIL_EXPIRE_TIME))
            else:
                out.append(OrderDone(o, DONE_REJECTED, DETAIL_INVALID))
            return
        if c.type == MARKET:
            if self._match(o, out):
                return
            if o.filled == 0:
                out.append(OrderDone(o, DONE_CANCELED, DETAIL_NO_LIQUIDITY))
                return
            if o.side == SELL or o.amount > 0:
                exhausted = o.remaining == 0
            else:
                best = self.best(SELL)
                qptl = self.spec.quote_units_per_tick_lot
                exhausted = o.budget == 0 or (best is not None and o.budget < best * qptl)
            if exhausted:
                out.append(OrderDone(o, DONE_FILLED, DETAIL_NONE))
            else:
                out.append(OrderDone(o, DONE_CANCELED, DETAIL_IOC_REMAINDER))
            return
        if self._crosses(o.side, o.price, self.best(SELL if o.side == BUY else BUY)):
            if c.post_only:
                out.append(OrderDone(o, DONE_REJECTED, DETAIL_POST_ONLY_WOULD_TAKE))
                return
            if c.tif == FOK and not self._fillable(o):
                out.append(OrderDone(o, DONE_REJECTED, DETAIL_FOK_NOT_FILLABLE))
                return
            if self._match(o, out):
                return
            if o.remaining == 0:
                out.append(OrderDone(o, DONE_FILLED, DETAIL_NONE))
                return
        if c.tif == IOC:
            out.append(OrderDone(o, DONE_CANCELED, DETAIL_IOC_REMAINDER))
        elif c.tif == FOK:
            out.append(OrderDone(o, DONE_REJECTED, DETAIL_FOK_NOT_FILLABLE))
        else:
            self._rest(o)

    def _owned(self, order_id: int, user: int, out: list[Event]) -> Order | None:
        o = self.live.get(order_id)
        if o is None:
            out.append(CommandRejected(order_id, user, REJECT_ORDER_NOT_FOUND, ""))
        elif o.user_id != user:
            out.append(CommandRejected(order_id, user, REJECT_NOT_OWNER, ""))
            return None
        return o

    def cancel(self, order_id: int, user: int, now: int, out: list[Event]) -> None:
        self._expire_due(now, out)
        o = self._owned(order_id, user, out)
        if o is not None:
            self._remove(o)
            out.append(OrderDone(o, DONE_CANCELED, DETAIL_USER_CANCEL))

    def cancel_all(self, user: int, side: int, now: int, out: list[Event]) -> None:
        self._expire_due(now, out)
        for oid in sorted(self.live):
            o = self.live[oid]
            if o.user_id == user and (not side or o.side == side):
                self._remove(o)
                out.append(OrderDone(o, DONE_CANCELED, DETAIL_CANCEL_ALL))

    def reduce(self, order_id: int, user: int, new_amount: int, now: int, out: list[Event]) -> None:
        self._expire_due(now, out)
        o = self._owned(order_id, user, out)
        if o is None:
            return
        if not 0 <= new_amount < o.amount:
            out.append(CommandRejected(order_id, user, REJECT_INVALID, ""))
            return
        if new_amount <= o.filled:
            self._remove(o)
            out.append(OrderDone(o, DONE_CANCELED, DETAIL_REDUCED_TO_ZERO))
            return
        old_remaining = o.remaining
        o.amount = new_amount
        o.remaining = new_amount - o.filled
        out.append(
            OrderAmended(order_id, user, o.side, o.price, o.amount, o.remaining, o.price, old_remaining, True)
        )

    def move(self, order_id: int, user: int, new_price: int, now: int, out: list[Event]) -> None:
        self._expire_due(now, out)
        o = self._owned(order_id, user, out)
        if o is None:
            return
        if new_price <= 0:
            out.append(CommandRejected(order_id, user, REJECT_INVALID, ""))
            return
        crosses = self._crosses(o.side, new_price, self.best(SELL if o.side == BUY else BUY))
        if crosses and o.cmd.post_only:
            out.append(CommandRejected(order_id, user, REJECT_POST_ONLY_WOULD_TAKE, ""))
            return
        self._remove(o)
        n = Order(o.cmd, o.created)
        n.price = new_price
        n.amount = o.amount
        n.remaining = o.remaining
        n.budget = o.budget
        n.filled = o.filled
        n.filled_quote = o.filled_quote
        out.append(
            OrderAmended(
                order_id, user, n.side, new_price, n.amount, n.remaining, o.price, n.remaining, False
            )
        )
        if crosses and self._match(n, out):
            return
        if n.remaining == 0:
            out.append(OrderDone(n, DONE_FILLED, DETAIL_NONE))
        else:
            self._rest(n)

    def expire(self, now: int, out: list[Event]) -> None:
        self._expire_due(now, out)


class RefEngine:
    """MatchingEngine's contract over RefBooks: per-source dedupe, a clock that never runs backwards,
    shard-wide expiry and cancel-all in symbol order, unknown markets rejected."""

    def __init__(self, specs: Iterable[MarketSpec]) -> None:
        self.books = {s.symbol: RefBook(s) for s in specs}
        self.seqs: dict[str, int] = {}
        self.last_time = 0
        self.event_seq = 0

    def apply(self, source: str, seq: int, now: int, cmd: Command) -> list[tuple[str, list[Event]]]:
        if seq <= self.seqs.get(source, 0):
            return []
        self.seqs[source] = seq
        now = max(now, self.last_time)
        self.last_time = now
        result: list[tuple[str, list[Event]]] = []
        if isinstance(cmd, ExpireOrders | CancelAll) and not cmd.market:
            for symbol in sorted(self.books):
                out: list[Event] = []
                if isinstance(cmd, ExpireOrders):
                    self.books[symbol].expire(now, out)
                else:
                    self.books[symbol].cancel_all(cmd.user_id, cmd.side, now, out)
                if out:
                    result.append((symbol, out))
        else:
            out = []
            book = self.books.get(cmd.market)
            if book is None:
                if not isinstance(cmd, ExpireOrders):
                    oid = getattr(cmd, "order_id", 0)
                    out.append(CommandRejected(oid, cmd.user_id, REJECT_UNKNOWN_MARKET, ""))
            elif isinstance(cmd, PlaceOrder):
                book.place(cmd, now, out)
            elif isinstance(cmd, CancelOrder):
                book.cancel(cmd.order_id, cmd.user_id, now, out)
            elif isinstance(cmd, CancelAll):
                book.cancel_all(cmd.user_id, cmd.side, now, out)
            elif isinstance(cmd, ReduceOrder):
                book.reduce(cmd.order_id, cmd.user_id, cmd.new_amount, now, out)
            elif isinstance(cmd, MoveOrder):
                book.move(cmd.order_id, cmd.user_id, cmd.new_price, now, out)
            else:
                book.expire(now, out)
            if out:
                result.append((cmd.market, out))
        self.event_seq += sum(len(events) for _, events in result)
        return result


def ref_tuples(result: list[tuple[str, list[Event]]]) -> list[tuple[Any, ...]]:
    return [(market, ev(e)) for market, events in result for e in events]


# --- settlement replay ------------------------------------------------------------------------------


class Settlement:
    """Replays matching events the way a risk/settlement layer does, from the events alone.

    A place freezes what the order may need (a limit buy: price x amount in quote; a sell: its amount in
    base; a market buy: its budget); a trade pays from the frozen hold at the order's own limit price and
    releases the price improvement; a reduce or move adjusts the hold; a done order releases its hold,
    which must then be exactly what the event says is left (remaining lots, or a market buy's budget).
    Balances are totals (available + frozen) per (user, asset) relative to the start; fees go to
    FEE_ACCOUNT. Every inconsistency raises AssertionError at the event that shows it.
    """

    def __init__(self, specs: Iterable[MarketSpec]) -> None:
        self.specs = {s.symbol: s for s in specs}
        self.balance: dict[tuple[int, str], int] = defaultdict(int)
        self.hold: dict[int, int] = {}  # open order id -> frozen units
        self.frozen: dict[tuple[int, str], int] = defaultdict(int)
        self.orders: dict[int, list[Any]] = {}  # open order id -> [cmd, price, amount, filled]
        self.trades = 0
        self.fees: dict[str, int] = defaultdict(int)

    def _hold_asset(self, market: str, side: int) -> str:
        spec = self.specs[market]
        return spec.quote.symbol if side == BUY else spec.base.symbol

    def _needed(self, oid: int) -> int:
        cmd, price, amount, filled = self.orders[oid]
        spec = self.specs[cmd.market]
        open_lots: int = amount - filled
        if cmd.side == SELL:
            return open_lots * spec.base_units_per_lot
        if cmd.type == MARKET:
            raise AssertionError("market buys are tracked by budget")
        return int(price) * open_lots * spec.quote_units_per_tick_lot

    def _freeze(self, oid: int, units: int) -> None:
        cmd = self.orders[oid][0]
        self.hold[oid] = self.hold.get(oid, 0) + units
        self.frozen[(cmd.user_id, self._hold_asset(cmd.market, cmd.side))] += units
        assert self.hold[oid] >= 0, f"order {oid}: hold went negative"

    def apply(self, market: str, events: Iterable[Event]) -> None:
        spec = self.specs[market]
        last_accepted: int | None = None
        for e in events:
            if isinstance(e, OrderAccepted):
                c = e.order
                if c.order_id in self.orders:  # a duplicate id: the next event rejects it
                    last_accepted = c.order_id
                    continue
                last_accepted = None
                self.orders[c.order_id] = [c, c.price, c.amount, 0]
                if c.type == MARKET and c.side == BUY:
                    self._freeze(c.order_id, max(c.quote_budget, 0))
                elif c.side in (BUY, SELL) and c.type in (LIMIT, MARKET):
                    self._freeze(c.order_id, max(self._needed(c.order_id), 0))
                else:
                    self._freeze(c.order_id, 0)
            elif isinstance(e, CommandRejected):
                if last_accepted is not None:
                    assert e.order_id == last_accepted and e.reason == REJECT_INVALID
                    last_accepted = None
            elif isinstance(e, TradeExecuted):
                self.trades += 1
                assert e.quote_units == e.price * e.amount * spec.quote_units_per_tick_lot
                assert e.base_units == e.amount * spec.base_units_per_lot
                assert e.amount > 0
                maker_side = SELL if e.taker_side == BUY else BUY
                for oid, user, side, fee_units in (
                    (e.taker_order_id, e.taker_user_id, e.taker_side, e.taker_fee),
                    (e.maker_order_id, e.maker_user_id, maker_side, e.maker_fee),
                ):
                    entry = self.orders[oid]
                    cmd, price = entry[0], entry[1]
                    assert cmd.user_id == user and cmd.side == side
                    if side == BUY:
                        pay_asset, pay, get_asset, get = (
                            spec.quote.symbol,
                            e.quote_units,
                            spec.base.symbol,
                            e.base_units,
                        )
                        if cmd.type == MARKET:
                            released = e.quote_units
                        else:
                            assert e.price <= price, "a buy paid above its limit"
                            released = price * e.amount * spec.quote_units_per_tick_lot
                    else:
                        pay_asset, pay, get_asset, get = (
                            spec.base.symbol,
                            e.base_units,
                            spec.quote.symbol,
                            e.quote_units,
                        )
                        if cmd.type != MARKET:
                            assert e.price >= price, "a sell received below its limit"
                        released = e.base_units
                    self._freeze(oid, -released)
                    self.balance[(user, pay_asset)] -= pay
                    self.balance[(user, get_asset)] += get - fee_units
                    self.balance[(FEE_ACCOUNT, get_asset)] += fee_units
                    self.fees[get_asset] += fee_units
                    assert 0 <= fee_units <= get
                    entry[3] += e.amount
                    if cmd.type == MARKET and cmd.side == BUY:
                        assert self.hold[oid] == e.taker_remaining_budget
                    else:
                        left = entry[2] - entry[3]
                        assert left == (e.taker_remaining if oid == e.taker_order_id else e.maker_remaining)
            elif isinstance(e, OrderAmended):
                entry = self.orders[e.order_id]
                cmd = entry[0]
                assert (cmd.user_id, cmd.side) == (e.user_id, e.side)
                assert entry[2] - entry[3] == e.old_remaining and entry[1] == e.old_price
                before = self._needed(e.order_id)
                entry[1], entry[2] = e.price, e.amount
                assert entry[2] - entry[3] == e.remaining > 0
                self._freeze(e.order_id, self._needed(e.order_id) - before)
            elif isinstance(e, OrderDone):
                o = e.order
                entry = self.orders[o.order_id]
                cmd = entry[0]
                assert o.cmd == cmd and o.filled == entry[3]
                if e.detail == DETAIL_INVALID:  # an invalid shape never held anything meaningful
                    left = self.hold[o.order_id]
                elif cmd.type == MARKET and cmd.side == BUY:
                    left = o.budget
                    assert o.budget + o.filled_quote == cmd.quote_budget
                else:
                    assert (o.price, o.amount) == (entry[1], entry[2])
                    assert o.remaining == (0 if e.reason == DONE_FILLED else entry[2] - entry[3])
                    left = self._needed(o.order_id) if e.reason != DONE_FILLED else 0
                if e.reason == DONE_FILLED and not (cmd.type == MARKET and cmd.side == BUY):
                    assert o.remaining == 0 and o.filled == o.amount
                assert self.hold[o.order_id] == left, (
                    f"order {o.order_id}: holds {self.hold[o.order_id]}, done event leaves {left}"
                )
                self._freeze(o.order_id, -left)
                assert self.hold.pop(o.order_id) == 0
                del self.orders[o.order_id]

    def apply_applied(self, applied: list[Applied]) -> None:
        for a in applied:
            self.apply(a.market, a.events)

    def open_ids(self) -> set[int]:
        return set(self.orders)

    def totals(self) -> dict[str, int]:
        """Sum of every balance delta per asset, users and fee account together."""
        out: dict[str, int] = defaultdict(int)
        for (_, asset), units in self.balance.items():
            out[asset] += units
        return dict(out)

    def user_deltas(self) -> dict[int, dict[str, int]]:
        out: dict[int, dict[str, int]] = defaultdict(dict)
        for (user, asset), units in sorted(self.balance.items()):
            if units:
                out[user][asset] = units
        return dict(out)

    def check_closed(self) -> None:
        """With no order open: nothing may stay frozen and every asset must sum to zero."""
        assert not self.orders, f"orders still open: {sorted(self.orders)}"
        assert all(v == 0 for v in self.frozen.values()), dict(self.frozen)
        assert all(v == 0 for v in self.totals().values()), self.totals()

"""Property tests over random command streams (hypothesis).

The streams mix every order type, invalid shapes, duplicate ids, cancels, cancel-alls, reduces, moves,
expiry ticks and self-trades among a few users on a narrow price range (so most orders cross).

After every command:
  (a) the book is not crossed;
  (c) the events equal, tuple for tuple, those of a naive reference book (tests/engine/conftest.py RefBook),
      and so does the full L3 book: every trade's maker is the best-priced, earliest live order;
  (e) depth() totals and counts equal the sums over the live orders of each price;
  (f) a consumer rebuilding the book from the events alone gets the same L3 book;
and over the whole stream
  (b) no quantity is lost: filled + remaining at done (or still open) + reduced = amount for every order,
      spent + returned = budget for market buys, trade lots = buy-side fills = sell-side fills, and the
      settlement replay's holds end exactly at zero with every asset summing to zero;
  (d) snapshot -> json -> restore -> continue gives the same events and state hash as running straight.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.common.markets import MarketSpec
from services.matching.book import OrderBook
from services.matching.engine import MatchingEngine
from services.matching.model import (
    BUY,
    DONE_FILLED,
    FOK,
    GTC,
    GTD,
    IOC,
    LIMIT,
    MARKET,
    SELL,
    CancelAll,
    CancelOrder,
    Command,
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
from tests.engine.conftest import (
    BTC,
    BTC_USDT,
    ETH,
    ETH_USDT,
    T0,
    RefBook,
    RefEngine,
    Settlement,
    applied_tuples,
    evs,
    ref_tuples,
)

USERS = 4
MARKETS = (BTC, ETH)
SPECS = {BTC: BTC_USDT, ETH: ETH_USDT}
FEES = [(0, 0), (1000, 2000), (1, 999_999), (333, 777)]

PLACE_KINDS = ["gtc"] * 5 + [
    "ioc",
    "fok",
    "gtd",
    "gtd",
    "post",
    "mbuy",
    "mbuyq",
    "msell",
    "junk",
    "dup",
    "late",
]
JUNK = [
    "zero_price",
    "zero_amount",
    "bad_side",
    "bad_tif",
    "bad_type",
    "gtc_expire",
    "post_market",
    "mbuy_no_budget",
    "mbuyq_no_budget",
    "market_fok",
]

# Every op has the same shape (kind, place kind, side, price, lots, user, stp, k, market, fee); its kind
# decides which fields it reads. Kinds are weighted by repetition. An op is drawn as one integer, spread
# over the space by a multiplicative bijection (hypothesis favours small integers) and decoded in mixed
# radix: far cheaper to generate than ten separate draws; failing streams still shrink by dropping ops.
OP_KINDS = ["place"] * 10 + ["cancel"] * 2 + ["reduce"] * 2 + ["move"] * 2 + ["tick"] * 2
OP_KINDS += ["cancel_all", "expire", "back", "resend"]
FIELDS: list[list[Any]] = [
    OP_KINDS,
    PLACE_KINDS,
    [BUY, SELL],
    list(range(95, 107)),  # price ticks (also a move's new price)
    list(range(1, 9)),  # lots (a reduce's new amount is lots - 2)
    list(range(1, USERS + 1)),  # user
    [0, 1, 2, 3],  # self-trade prevention (and: 0 = a command from the wrong user)
    list(range(1, 61)),  # k: GTD lifetime / budget factor / junk choice / target / time step
    [0, 1],  # market
    list(range(len(FEES))),
]
_SPACE = 1
for _f in FIELDS:
    _SPACE *= len(_f)


def decode(n: int) -> tuple[Any, ...]:
    n = n * 1_000_000_007 % _SPACE  # a bijection: 1e9+7 is a prime not dividing _SPACE
    out = []
    for f in FIELDS:
        n, i = divmod(n, len(f))
        out.append(f[i])
    return tuple(out)


ops = st.lists(st.integers(0, _SPACE - 1).map(decode), min_size=30, max_size=120)


@dataclass
class Step:
    source: str
    seq: int
    now: int
    cmd: Command


def realize(raw: list[tuple[Any, ...]], markets: tuple[str, ...]) -> list[Step]:
    """Turn abstract ops into a concrete command stream (independent of any book's state)."""
    steps: list[Step] = []
    placed: list[tuple[int, int, str]] = []  # (order id, user, market) of every place so far
    resting: list[tuple[int, int, str]] = []  # those that may rest (GTC, GTD, post-only)
    next_id = 1
    now = T0
    seqs = {"acc-0": 0, "acc-1": 0}

    def target(idx: int, pool: list[tuple[int, int, str]]) -> tuple[int, int, str] | None:
        recent = pool[-8:]
        return recent[idx % len(recent)] if recent else None

    def emit(cmd: Command, source: str = "acc-0") -> None:
        seqs[source] += 1
        steps.append(Step(source, seqs[source], now, cmd))

    for kind, pk, side, price, lots, user, stp, k, mi, fi in raw:
        if kind == "tick":
            now += k % 20 + 1
        elif kind == "back":
            now -= k % 15 + 1  # a late stamp: the engine must not let time run backwards
        elif kind == "resend":
            if steps:
                old = steps[-1 - k % min(len(steps), 4)]
                steps.append(Step(old.source, old.seq, now, old.cmd))  # same (source, seq): ignored
        elif kind == "place":
            market = markets[mi % len(markets)]
            spec = SPECS[market]
            maker_fee, taker_fee = FEES[fi]
            oid = next_id
            next_id += 1
            fields: dict[str, Any] = {
                "type": LIMIT,
                "tif": GTC,
                "price": price,
                "amount": lots,
                "stp": stp,
                "maker_fee_ppm": maker_fee,
                "taker_fee_ppm": taker_fee,
            }
            if pk == "ioc":
                fields["tif"] = IOC
            elif pk == "fok":
                fields["tif"] = FOK
            elif pk == "gtd":
                fields.update(tif=GTD, expire_at=now + k)
            elif pk == "late":
                fields.update(tif=GTD, expire_at=now - k % 3)  # due already
            elif pk == "post":
                fields["post_only"] = True
                if k % 2:
                    fields.update(tif=GTD, expire_at=now + k)
            elif pk == "mbuy":
                budget = k * 61 * spec.quote_units_per_tick_lot + k * 7 % spec.quote_units_per_tick_lot
                fields.update(type=MARKET, tif=IOC, price=0, amount=0, quote_budget=budget)
                side = BUY
            elif pk == "mbuyq":
                # By amount within a budget: a cap of 91..150 ticks a lot on average, so on prices 95..106
                # either limit may end it (and a budget may not afford even one lot).
                budget = (
                    lots * (90 + k) * spec.quote_units_per_tick_lot + k * 7 % spec.quote_units_per_tick_lot
                )
                if k % 5 == 0:
                    budget //= 3 * lots
                tif = GTC if k % 2 else IOC
                fields.update(type=MARKET, tif=tif, price=0, amount=lots, quote_budget=budget)
                side = BUY
            elif pk == "msell":
                fields.update(type=MARKET, tif=IOC if k % 3 else GTC, price=0)
                side = SELL
            elif pk == "junk":
                j = JUNK[k % len(JUNK)]
                if j == "zero_price":
                    fields["price"] = 0
                elif j == "zero_amount":
                    fields["amount"] = 0
                elif j == "bad_side":
                    side = 3
                elif j == "bad_tif":
                    fields["tif"] = 0
                elif j == "bad_type":
                    fields["type"] = 3
                elif j == "gtc_expire":
                    fields["expire_at"] = now + 5
                elif j == "post_market":
                    fields.update(type=MARKET, tif=IOC, price=0, post_only=True)
                    side = SELL
                elif j == "mbuy_no_budget":
                    fields.update(type=MARKET, tif=IOC, price=0, amount=0)
                    side = BUY
                elif j == "mbuyq_no_budget":
                    fields.update(type=MARKET, tif=IOC, price=0)  # an amount but no budget
                    side = BUY
                else:
                    fields.update(type=MARKET, tif=FOK, price=0)
                    side = SELL
            elif pk == "dup":
                t = target(k, placed)
                if t is not None:
                    oid, _, market = t  # the same id again (live: rejected; done: reused)
                    next_id -= 1
            cmd = PlaceOrder(oid, user, market, side, **fields)
            placed.append((oid, user, market))
            if pk in ("gtc", "gtd", "post"):
                resting.append((oid, user, market))
            emit(cmd, "acc-1" if user == 4 else "acc-0")
        elif kind == "cancel_all":
            where = k % 3
            market = "" if where == 2 and len(markets) > 1 else markets[where % len(markets)]
            emit(CancelAll(user, market, stp % 3))
        elif kind == "expire":
            where = k % 3
            emit(ExpireOrders("" if where == 2 or len(markets) == 1 else markets[where]))
        else:
            t = target(k, resting if k % 4 else placed)
            if t is None:
                continue
            oid, owner, market = t
            who = owner if stp else owner % USERS + 1
            if kind == "cancel":
                emit(CancelOrder(oid, who, market))
            elif kind == "reduce":
                emit(ReduceOrder(oid, who, market, lots - 2))
            else:
                emit(MoveOrder(oid, who, market, 0 if stp == 1 and k % 7 == 0 else price))
    return steps


# --- checks -------------------------------------------------------------------------------------------


class Conservation:
    """(b): filled + remaining at done + reduced = amount; spent + returned = budget."""

    def __init__(self) -> None:
        self.cmd: dict[int, PlaceOrder] = {}
        self.filled: dict[int, int] = defaultdict(int)
        self.quote: dict[int, int] = defaultdict(int)
        self.reduced: dict[int, int] = defaultdict(int)
        self.trade_lots = 0
        self.side_fills = {BUY: 0, SELL: 0}
        self.done: set[int] = set()

    def apply(self, events: Iterable[Event]) -> None:
        for e in events:
            if isinstance(e, TradeExecuted):
                self.trade_lots += e.amount
                for oid in (e.taker_order_id, e.maker_order_id):
                    self.filled[oid] += e.amount
                    self.quote[oid] += e.quote_units
            elif isinstance(e, OrderAmended) and e.priority_kept:
                self.reduced[e.order_id] += e.old_remaining - e.remaining
            elif isinstance(e, OrderDone):
                self.check(e.order, done=True, filled_reason=e.reason == DONE_FILLED)
                self.forget(e.order.order_id)
            elif isinstance(e, OrderAccepted):
                self.cmd.setdefault(e.order.order_id, e.order)

    def check(self, o: Any, *, done: bool, filled_reason: bool = False) -> None:
        oid = o.order_id
        c = self.cmd[oid]
        assert o.filled == self.filled[oid] and o.filled_quote == self.quote[oid], oid
        if c.type == MARKET and c.side == BUY:
            assert self.quote[oid] + o.budget == c.quote_budget, oid
            if c.amount > 0:  # by amount: both limits hold
                assert self.filled[oid] + o.remaining == c.amount, oid
                assert o.budget >= 0 and o.remaining >= 0, oid
                if filled_reason:
                    assert o.remaining == 0
        else:
            assert self.filled[oid] + o.remaining + self.reduced[oid] == c.amount, oid
            if filled_reason:
                assert o.remaining == 0
        self.side_fills[c.side if c.side in (BUY, SELL) else BUY] += self.filled[oid]

    def forget(self, oid: int) -> None:
        self.cmd.pop(oid, None)
        for d in (self.filled, self.quote, self.reduced):
            d.pop(oid, None)

    def finish(self, open_orders: Iterable[Any]) -> None:
        for o in open_orders:
            self.check(o, done=False)
        assert self.side_fills[BUY] == self.side_fills[SELL] == self.trade_lots


class EventBook:
    """The book as a consumer rebuilds it from the events alone (as the market-data service does from the
    wire events): an accepted limit order enters, trades and amendments set what is left (a move sends it
    to the back), a done order leaves. It must always equal the engine's own book, L3 order included."""

    def __init__(self) -> None:
        self.orders: dict[int, list[int]] = {}  # id -> [side, price, remaining, arrival]
        self.arrivals = 0

    def _arrival(self) -> int:
        self.arrivals += 1
        return self.arrivals

    def apply(self, events: Iterable[Event]) -> None:
        for e in events:
            if isinstance(e, OrderAccepted):
                c = e.order
                if c.type == LIMIT and c.order_id not in self.orders:  # a duplicate id is rejected next
                    self.orders[c.order_id] = [c.side, c.price, c.amount, self._arrival()]
            elif isinstance(e, TradeExecuted):
                self.orders[e.maker_order_id][2] = e.maker_remaining
                if e.taker_order_id in self.orders:
                    self.orders[e.taker_order_id][2] = e.taker_remaining
            elif isinstance(e, OrderAmended):
                o = self.orders[e.order_id]
                o[1], o[2] = e.price, e.remaining
                if not e.priority_kept:
                    o[3] = self._arrival()
            elif isinstance(e, OrderDone):
                self.orders.pop(e.order.order_id, None)

    def check(self, book: OrderBook) -> None:
        for side in (BUY, SELL):
            mine = sorted(
                ((o[1], o[3], oid, o[2]) for oid, o in self.orders.items() if o[0] == side),
                key=lambda t: (-t[0] if side == BUY else t[0], t[1]),
            )
            assert [(oid, p, r) for p, _, oid, r in mine] == [
                (o.order_id, o.price, o.remaining) for o in book.iter_orders(side)
            ]


def check_book(book: OrderBook, ref: RefBook) -> None:
    bid, ask = book.best_bid(), book.best_ask()
    assert bid == ref.best(BUY) and ask == ref.best(SELL)
    if bid is not None and ask is not None:
        assert bid < ask, f"crossed book {bid} >= {ask}"  # (a)
    for side in (BUY, SELL):
        real = [
            (o.order_id, o.price, o.remaining, o.amount, o.filled, o.state()) for o in book.iter_orders(side)
        ]
        naive = [
            (o.order_id, o.price, o.remaining, o.amount, o.filled, o.state()) for o in ref.side_orders(side)
        ]
        assert real == naive  # (c) the same orders in the same priority
    depth = book.depth(10**9)
    assert depth == ref.depth()  # (e)
    for side, levels in zip((BUY, SELL), depth, strict=True):
        sums: dict[int, list[int]] = {}
        for o in book.iter_orders(side):
            s = sums.setdefault(o.price, [0, 0])
            s[0] += o.remaining
            s[1] += 1
        assert [(p, t, n) for p, t, n in levels] == [(p, s[0], s[1]) for p, s in sums.items()]
        assert all(t > 0 and n > 0 for _, t, n in levels)
    assert len(book) == len(ref.live)
    assert book.next_trade_id == ref.next_trade_id


def run_book(steps: list[Step]) -> None:
    spec = BTC_USDT
    book, ref = OrderBook(spec), RefBook(spec)
    settle, cons, rebuilt = Settlement([spec]), Conservation(), EventBook()
    last = 0
    for st_ in steps:
        now = max(st_.now, last)  # an OrderBook trusts its caller's clock; feed it a monotonic one
        last = now
        real: list[Event] = []
        naive: list[Event] = []
        for b, out in ((book, real), (ref, naive)):
            c = st_.cmd
            if isinstance(c, PlaceOrder):
                b.place(c, now, out)
            elif isinstance(c, CancelOrder):
                b.cancel(c.order_id, c.user_id, now, out)
            elif isinstance(c, CancelAll):
                b.cancel_all(c.user_id, c.side, now, out)
            elif isinstance(c, ReduceOrder):
                b.reduce(c.order_id, c.user_id, c.new_amount, now, out)
            elif isinstance(c, MoveOrder):
                b.move(c.order_id, c.user_id, c.new_price, now, out)
            else:
                b.expire(now, out)
        got = evs(real)
        assert got == evs(naive), st_
        settle.apply(BTC, real)
        cons.apply(real)
        rebuilt.apply(real)
        check_book(book, ref)
        rebuilt.check(book)
    cons.finish([*book.iter_orders(BUY), *book.iter_orders(SELL)])
    # close everything: every hold must come back exactly, every asset sum to zero
    for user in sorted({o.user_id for o in book.orders.values()}):
        closing: list[Event] = []
        book.cancel_all(user, 0, last, closing)
        settle.apply(BTC, closing)
    settle.check_closed()
    assert len(book) == 0 and book.depth() == ([], [])


SETTINGS = settings(
    max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)


@SETTINGS
@given(ops)
def test_one_book_against_the_reference(raw: list[tuple[Any, ...]]) -> None:
    steps = realize(raw, (BTC,))
    seen: set[tuple[str, int]] = set()
    unique = []
    for s in steps:  # the bare book has no dedupe: drop the resends
        if (s.source, s.seq) not in seen:
            seen.add((s.source, s.seq))
            unique.append(s)
    run_book(unique)


def run_engine(steps: list[Step]) -> tuple[MatchingEngine, list[Any]]:
    specs = [SPECS[m] for m in MARKETS]
    eng, ref = MatchingEngine("matching-0", specs), RefEngine(specs)
    settle, cons = Settlement(specs), Conservation()
    rebuilt = {m: EventBook() for m in MARKETS}
    stream: list[Any] = []
    for st_ in steps:
        out = eng.apply(st_.source, st_.seq, st_.now, st_.cmd)
        got = applied_tuples(out)
        assert got == ref_tuples(ref.apply(st_.source, st_.seq, st_.now, st_.cmd)), st_
        assert eng.event_seq == ref.event_seq and eng.last_time == ref.last_time
        assert all(a.events for a in out)
        stream.extend(got)
        settle.apply_applied(out)
        for a in out:
            cons.apply(a.events)
            rebuilt[a.market].apply(a.events)
        for m in MARKETS:
            check_book(eng.books[m], ref.books[m])
            rebuilt[m].check(eng.books[m])
    cons.finish([o for b in eng.books.values() for side in (BUY, SELL) for o in b.iter_orders(side)])
    seq = max((s.seq for s in steps), default=0)
    for user in range(1, USERS + 1):
        seq += 1
        settle.apply_applied(eng.apply("closer", seq, eng.last_time, CancelAll(user, "")))
    settle.check_closed()
    return eng, stream


@SETTINGS
@given(ops)
def test_engine_with_two_markets_against_the_reference(raw: list[tuple[Any, ...]]) -> None:
    run_engine(realize(raw, MARKETS))


def _snapshot_roundtrip(eng: MatchingEngine) -> MatchingEngine:
    data = json.loads(json.dumps(eng.snapshot()))
    return MatchingEngine.restore(eng.shard, {m: SPECS[m] for m in MARKETS}, data)


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops, st.integers(0, 10**6))
def test_snapshot_restore_continue_equals_straight_run(raw: list[tuple[Any, ...]], cut: int) -> None:
    steps = realize(raw, MARKETS)
    specs = [SPECS[m] for m in MARKETS]
    straight = MatchingEngine("matching-0", specs)
    straight_events = [applied_tuples(straight.apply(s.source, s.seq, s.now, s.cmd)) for s in steps]

    split = cut % (len(steps) + 1)
    first = MatchingEngine("matching-0", specs)
    events = [applied_tuples(first.apply(s.source, s.seq, s.now, s.cmd)) for s in steps[:split]]
    restored = _snapshot_roundtrip(first)
    assert restored.state_hash() == first.state_hash()
    assert restored.snapshot() == first.snapshot()
    events += [applied_tuples(restored.apply(s.source, s.seq, s.now, s.cmd)) for s in steps[split:]]

    assert events == straight_events
    assert restored.state_hash() == straight.state_hash()
    assert restored.snapshot() == straight.snapshot()
    assert restored.event_seq == straight.event_seq
    # the far future expires the same GTD orders in both
    a = straight.apply("timer", 1, 10**12, ExpireOrders())
    b = restored.apply("timer", 1, 10**12, ExpireOrders())
    assert applied_tuples(a) == applied_tuples(b)
    assert restored.state_hash() == straight.state_hash()


def test_realize_produces_every_command_kind() -> None:
    """Guard for the generator itself: a fixed op list covers the whole command vocabulary."""
    raw: list[tuple[Any, ...]] = [
        ("place", k, BUY, 100, 2, 1, 0, i + 1, i % 2, 1) for i, k in enumerate(sorted(set(PLACE_KINDS)))
    ]
    raw += [
        ("cancel", "gtc", BUY, 100, 2, 1, 1, 0, 0, 0),
        ("cancel_all", "gtc", BUY, 100, 2, 1, 0, 2, 0, 0),
        ("reduce", "gtc", BUY, 100, 2, 1, 1, 1, 0, 0),
        ("move", "gtc", BUY, 101, 2, 1, 2, 2, 0, 0),
        ("expire", "gtc", BUY, 100, 2, 1, 0, 2, 0, 0),
        ("tick", "gtc", BUY, 100, 2, 1, 0, 5, 0, 0),
        ("back", "gtc", BUY, 100, 2, 1, 0, 2, 0, 0),
        ("cancel_all", "gtc", BUY, 100, 2, 2, 0, 0, 0, 0),
        ("resend", "gtc", BUY, 100, 2, 1, 0, 0, 0, 0),
    ]
    steps = realize(raw, MARKETS)
    kinds = {type(s.cmd).__name__ for s in steps}
    assert kinds == {"PlaceOrder", "CancelOrder", "CancelAll", "ReduceOrder", "MoveOrder", "ExpireOrders"}
    assert steps[-1].seq == steps[-2].seq and steps[-1].source == steps[-2].source
    eng, _ = run_engine(steps)
    assert eng.last_time == T0 + 3  # the closing cancel-alls run at the engine's last time


def test_reference_book_agrees_on_a_known_sequence() -> None:
    """The reference itself is checked against hand-computed facts, so a shared mistake would show."""
    spec: MarketSpec = BTC_USDT
    ref = RefBook(spec)
    out: list[Event] = []
    ref.place(PlaceOrder(1, 1, BTC, SELL, LIMIT, GTC, 100, 2), T0, out)
    ref.place(PlaceOrder(2, 2, BTC, SELL, LIMIT, GTC, 99, 2), T0, out)
    ref.place(PlaceOrder(3, 3, BTC, BUY, LIMIT, GTC, 100, 3), T0, out)
    trades = [
        (e.maker_order_id, e.price, e.amount, e.quote_units) for e in out if isinstance(e, TradeExecuted)
    ]
    assert trades == [(2, 99, 2, 1980), (1, 100, 1, 1000)]
    assert ref.depth() == ([], [(100, 1, 1)])


# --- the book's lazy structures under load (compared with the reference on every command) ----------------


def _step(cmd: Command, now: int) -> Step:
    return Step("acc-0", 0, now, cmd)


def _replay(steps: list[Step]) -> OrderBook:
    book = OrderBook(BTC_USDT)
    out: list[Event] = []
    for s in steps:
        c = s.cmd
        if isinstance(c, PlaceOrder):
            book.place(c, s.now, out)
        elif isinstance(c, CancelOrder):
            book.cancel(c.order_id, c.user_id, s.now, out)
    return book


def test_dead_entries_are_compacted_on_cancel() -> None:
    """A level's queue keeps canceled orders until it holds mostly dead ones, then drops them, keeping
    time priority (white box: the queue length shows the compaction ran)."""
    steps = [
        _step(PlaceOrder(i, i % 3 + 1, BTC, SELL, LIMIT, GTC, 100, 1 + i % 4), T0 + i) for i in range(1, 101)
    ]
    steps += [_step(CancelOrder(i, i % 3 + 1, BTC), T0 + 200) for i in range(1, 101) if i % 10 < 7]
    steps.append(_step(PlaceOrder(500, 9, BTC, BUY, LIMIT, GTC, 100, 25), T0 + 300))
    run_book(steps)
    level = _replay(steps[:-1]).asks.levels[100]
    assert level.count == 30 and len(level.orders) < 100


def test_dead_entries_are_compacted_while_stp_removes_makers_inside_the_matching_loop() -> None:
    """Self-trade prevention removes makers from the very queue the matching loop walks; when that
    triggers a compaction, the loop must go on with the compacted queue."""
    steps = [
        _step(PlaceOrder(i, 1, BTC, SELL, LIMIT, GTC, 100, 1), T0) for i in range(1, 41)
    ]  # own, in front
    steps.append(_step(PlaceOrder(41, 3, BTC, SELL, LIMIT, GTC, 100, 1), T0))
    steps += [_step(PlaceOrder(i, 2, BTC, SELL, LIMIT, GTC, 100, 1), T0) for i in range(42, 92)]
    steps += [_step(PlaceOrder(i, 3, BTC, SELL, LIMIT, GTC, 100, 2), T0) for i in range(92, 101)]
    steps += [_step(CancelOrder(i, 2, BTC), T0 + 1) for i in range(42, 92)]  # 50 dead in the middle
    taker = PlaceOrder(500, 1, BTC, BUY, LIMIT, GTC, 100, 1, stp=2)
    book = _replay(steps)
    assert len(book.asks.levels[100].orders) == 100  # nothing compacted yet
    out: list[Event] = []
    book.place(taker, T0 + 2, out)
    trades = [e for e in out if isinstance(e, TradeExecuted)]
    assert [(t.maker_order_id, t.amount) for t in trades] == [(41, 1)]
    assert sum(isinstance(e, OrderDone) for e in out) == 40 + 1 + 1  # own makers, order 41, the taker
    assert [o.order_id for o in book.iter_orders(SELL)] == list(range(92, 101))
    assert len(book.asks.levels[100].orders) == 9  # compacted mid-loop: the 50 dead entries are gone
    run_book([*steps, _step(taker, T0 + 2), _step(PlaceOrder(501, 4, BTC, BUY, LIMIT, IOC, 100, 5), T0 + 3)])


def test_many_price_levels_come_and_go() -> None:
    """Hundreds of levels created and emptied (the best-price heap is lazy and gets rebuilt)."""
    import random

    rng = random.Random(20240607)
    steps: list[Step] = []
    live: list[tuple[int, int]] = []
    oid = 0
    now = T0
    for _ in range(1500):
        now += 1
        r = rng.random()
        if r < 0.5 or not live:
            oid += 1
            side = rng.choice([BUY, SELL])
            price = rng.randint(1, 400) if side == BUY else rng.randint(401, 800)
            if rng.random() < 0.05:  # now and then a crossing order sweeps a few levels
                price = 800 if side == BUY else 1
            user = rng.randint(1, 5)
            tif = GTD if rng.random() < 0.1 else GTC
            steps.append(
                _step(
                    PlaceOrder(
                        oid,
                        user,
                        BTC,
                        side,
                        LIMIT,
                        tif,
                        price,
                        rng.randint(1, 3),
                        stp=rng.randint(0, 3),
                        expire_at=now + rng.randint(1, 200) if tif == GTD else 0,
                    ),
                    now,
                )
            )
            live.append((oid, user))
        elif r < 0.85:
            target, user = live.pop(rng.randrange(len(live)))
            steps.append(_step(CancelOrder(target, user, BTC), now))
        elif r < 0.95:
            target, user = live[rng.randrange(len(live))]
            steps.append(_step(MoveOrder(target, user, BTC, rng.randint(1, 800)), now))
        else:
            steps.append(_step(ExpireOrders(BTC), now))
    run_book(steps)

"""Snapshots: plain data through JSON, restore, continue; canonical form and state hash."""

from __future__ import annotations

import json
from typing import Any

import pytest

from services.matching.book import SNAPSHOT_VERSION, OrderBook
from services.matching.engine import ENGINE_SNAPSHOT_VERSION, MatchingEngine
from services.matching.model import (
    BUY,
    GTD,
    SELL,
    STP_CANCEL_BOTH,
    CancelAll,
    CancelOrder,
    Command,
    Event,
    ExpireOrders,
    MoveOrder,
    PlaceOrder,
    ReduceOrder,
)
from tests.engine.conftest import (
    BTC,
    BTC_USDT,
    ETH,
    ETH_USDT,
    T0,
    BookDriver,
    applied_tuples,
    evs,
    lim,
    mbuy,
)


def _json(data: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(data))  # type: ignore[no-any-return]


def busy_book() -> BookDriver:
    """Every kind of resting state: partly filled, reduced, moved, GTD, post-only, fees, STP mode."""
    d = BookDriver()
    d.placed(
        lim(1, 1, SELL, 105, 10, maker_fee_ppm=1000, taker_fee_ppm=2000),
        lim(2, 2, SELL, 105, 4, GTD, expire_at=T0 + 100),
        lim(3, 3, SELL, 107, 6, post_only=True, stp=STP_CANCEL_BOTH),
        lim(4, 1, BUY, 100, 8),
        lim(5, 2, BUY, 99, 3, GTD, expire_at=T0 + 50),
        lim(6, 3, BUY, 100, 2),
    )
    d.place(lim(7, 4, BUY, 105, 3, taker_fee_ppm=2000), T0 + 1)  # partly fills 1
    d.place(mbuy(8, 4, 105 * 10 * 2 + 7), T0 + 2)  # 2 more lots of 1
    d.reduce(4, 1, 5, T0 + 3)
    d.move(6, 3, 101, T0 + 4)
    d.move(2, 2, 106, T0 + 5)
    d.cancel(3, 3, T0 + 6)
    d.placed(lim(9, 5, SELL, 107, 1))
    return d


def continue_with(book: OrderBook) -> list[Any]:
    """The same later commands on a book; their events as tuples."""
    cmds: list[tuple[str, int, Any]] = [
        ("place", T0 + 10, lim(20, 6, BUY, 106, 7)),
        ("expire", T0 + 50, None),
        ("place", T0 + 60, lim(21, 7, SELL, 99, 4)),
        ("reduce", T0 + 61, (4, 1, 2)),
        ("expire", T0 + 100, None),
        ("place", T0 + 101, mbuy(22, 8, 10**9)),
    ]
    events: list[Any] = []
    for kind, now, arg in cmds:
        out: list[Event] = []
        if kind == "place":
            book.place(arg, now, out)
        elif kind == "reduce":
            order_id, user, new_amount = arg
            book.reduce(order_id, user, new_amount, now, out)
        else:
            book.expire(now, out)
        events.append(evs(out))
    return events


def test_book_snapshot_survives_json_and_restores_the_same_book() -> None:
    d = busy_book()
    snap = d.book.snapshot()
    data = _json(snap)
    restored = OrderBook.restore(BTC_USDT, data)
    assert restored.state_hash() == d.book.state_hash()
    assert _json(restored.snapshot()) == data
    assert restored.depth() == d.book.depth()
    assert restored.next_trade_id == d.book.next_trade_id == 3
    for side in (BUY, SELL):
        assert list(restored.iter_orders(side)) == list(d.book.iter_orders(side))  # Order __eq__: full state
    assert sorted(restored.orders) == sorted(d.book.orders) == [1, 2, 4, 5, 6, 9]
    # the snapshot names every order's full command (fees, STP mode, expiry, post-only, original price)
    assert restored.orders[2].cmd == d.book.orders[2].cmd
    assert (restored.orders[2].price, restored.orders[2].cmd.price) == (106, 105)
    assert restored.orders[4].amount == 5 and restored.orders[4].cmd.amount == 8


def test_book_continues_identically_after_restore() -> None:
    d = busy_book()
    restored = OrderBook.restore(BTC_USDT, _json(d.book.snapshot()))
    a = continue_with(d.book)
    b = continue_with(restored)
    assert a == b
    assert any(e[0] == "trade" for step in a for e in step)
    assert any(e[0] == "done" and e[2] == 3 for step in a for e in step)  # the GTD orders expired
    assert restored.state_hash() == d.book.state_hash()


def test_snapshot_is_canonical_whatever_the_history() -> None:
    o1, o2, o3 = lim(1, 1, BUY, 100, 1), lim(2, 2, BUY, 100, 2), lim(3, 3, BUY, 100, 3)
    a = BookDriver()
    a.placed(o1, o2, o3)
    a.cancel(2, 2)  # leaves a dead entry inside the level
    b = BookDriver()
    b.placed(o1, o3)
    assert a.book.snapshot() == b.book.snapshot()
    assert a.book.state_hash() == b.book.state_hash()


@pytest.mark.parametrize(
    "change",
    ["reduce", "priority", "trade_id", "created", "fee", "empty"],
)
def test_state_hash_sees_every_difference(change: str) -> None:
    def build(variant: bool) -> OrderBook:
        d = BookDriver()
        fee = 7 if variant and change == "fee" else 0
        d.place(lim(1, 1, BUY, 100, 5, maker_fee_ppm=fee), T0 + (1 if variant and change == "created" else 0))
        d.placed(lim(2, 2, BUY, 100, 5))
        if variant and change == "reduce":
            d.reduce(1, 1, 4)
        if variant and change == "priority":
            d.move(1, 1, 100)  # same price, back of the queue
        if variant and change == "trade_id":
            d.placed(lim(3, 3, SELL, 200, 1))
            d.place(lim(4, 4, BUY, 200, 1))  # both filled: only the trade counter differs
        if variant and change == "empty":
            d.cancel(2, 2)
        return d.book

    base, other = build(False), build(True)
    assert base.state_hash() != other.state_hash()
    assert base.snapshot() != other.snapshot()


def test_restore_refuses_foreign_snapshots() -> None:
    data = _json(busy_book().book.snapshot())
    with pytest.raises(ValueError):
        OrderBook.restore(ETH_USDT, data)
    with pytest.raises(ValueError):
        OrderBook.restore(BTC_USDT, {**data, "version": SNAPSHOT_VERSION + 1})
    eng = MatchingEngine("matching-0", [BTC_USDT])
    snap = _json(eng.snapshot())
    with pytest.raises(ValueError):
        MatchingEngine.restore("matching-1", {BTC: BTC_USDT}, snap)
    with pytest.raises(ValueError):
        MatchingEngine.restore(
            "matching-0", {BTC: BTC_USDT}, {**snap, "version": ENGINE_SNAPSHOT_VERSION + 1}
        )
    with pytest.raises(ValueError):  # a book of a market this shard is not configured for
        MatchingEngine.restore("matching-0", {ETH: ETH_USDT}, snap)


def test_restore_adds_empty_books_for_newly_configured_markets() -> None:
    eng = MatchingEngine("matching-0", [BTC_USDT])
    eng.apply("s", 1, T0, lim(1, 1, BUY, 100, 1))
    restored = MatchingEngine.restore("matching-0", {BTC: BTC_USDT, ETH: ETH_USDT}, _json(eng.snapshot()))
    assert sorted(restored.books) == [BTC, ETH]
    assert len(restored.books[ETH]) == 0 and list(restored.books[BTC].orders) == [1]


def engine_commands() -> list[tuple[str, int, int, Command]]:
    return [
        ("acc-0", 1, T0, lim(1, 1, SELL, 100, 5, market=BTC)),
        ("acc-0", 2, T0 + 1, lim(2, 2, SELL, 101, 5, GTD, market=ETH, expire_at=T0 + 30)),
        ("acc-1", 1, T0 + 2, lim(3, 3, BUY, 100, 2, market=BTC)),
        ("acc-0", 3, T0 + 3, MoveOrder(2, 2, ETH, 102)),
        ("acc-0", 4, T0 + 4, ReduceOrder(1, 1, BTC, 4)),
        # --- a snapshot is taken here in the tests below ---
        ("acc-0", 4, T0 + 5, CancelOrder(1, 1, BTC)),  # a resend: ignored
        ("acc-1", 2, T0 + 1, lim(4, 4, BUY, 102, 1, market=ETH)),  # stamped early: runs at T0 + 4
        ("acc-0", 5, T0 + 31, ExpireOrders()),
        ("acc-0", 6, T0 + 32, CancelAll(1, "")),
    ]


def test_engine_snapshot_restore_continue() -> None:
    specs = {BTC: BTC_USDT, ETH: ETH_USDT}
    straight = MatchingEngine("matching-0", specs.values())
    first = MatchingEngine("matching-0", specs.values())
    cmds = engine_commands()
    a = [applied_tuples(straight.apply(*c)) for c in cmds]
    b = [applied_tuples(first.apply(*c)) for c in cmds[:5]]
    data = _json(first.snapshot())
    assert data["source_seqs"] == {"acc-0": 4, "acc-1": 1}
    assert data["event_seq"] == first.event_seq and data["last_time"] == T0 + 4
    restored = MatchingEngine.restore("matching-0", specs, data)
    assert restored.state_hash() == first.state_hash()
    b += [applied_tuples(restored.apply(*c)) for c in cmds[5:]]
    assert a == b
    assert a[5] == []  # the resend after the restore is still recognised
    assert restored.state_hash() == straight.state_hash()
    assert restored.event_seq == straight.event_seq and restored.last_time == straight.last_time == T0 + 32
    # the order placed with an early stamp got the restored clock's time
    ((_, accepted), (_, trade), *_rest) = a[6]
    assert accepted[0] == "accepted" and trade[0] == "trade"
    assert _rest[-1][1][:4] == ("done", 4, 1, 0) and _rest[-1][1][4][14] == T0 + 4  # Order.created
    assert straight.books[ETH].next_trade_id == restored.books[ETH].next_trade_id == 2


def test_engine_state_hash_covers_dedupe_clock_and_counters() -> None:
    def eng(seq: int = 1, now: int = T0, source: str = "s") -> MatchingEngine:
        e = MatchingEngine("matching-0", [BTC_USDT])
        e.apply(source, seq, now, CancelOrder(1, 1, BTC))  # one rejected event
        return e

    base = eng().state_hash()
    assert eng().state_hash() == base
    assert eng(seq=2).state_hash() != base
    assert eng(now=T0 + 1).state_hash() != base
    assert eng(source="t").state_hash() != base
    other = eng()
    other.apply("s", 2, T0, CancelOrder(1, 1, BTC))
    assert other.state_hash() != base


def test_restored_book_is_independent_of_the_original() -> None:
    d = busy_book()
    snap = d.book.snapshot()
    frozen = json.dumps(snap)
    restored = OrderBook.restore(BTC_USDT, _json(snap))
    h = d.book.state_hash()
    out: list[Event] = []
    restored.place(PlaceOrder(50, 9, BTC, BUY, price=110, amount=100), T0 + 7, out)
    restored.cancel(4, 1, T0 + 7, out)
    assert d.book.state_hash() == h
    assert json.dumps(snap) == frozen  # the snapshot taken earlier did not change either

"""Queries on every backend: keyset paging (every row exactly once, newest first, for any page size),
filters, an order's trades, orders by id, and the errors for bad requests."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, TypeVar

import pytest
from exchange.v1 import events_pb2 as ev
from sqlalchemy import Engine

from services.common.enums import FINAL_STATUSES
from services.common.errors import InvalidArgument, NotFound, Reason
from services.common.limits import MAX_PAGE_SIZE
from services.history.queries import (
    BUSINESS_NAMES,
    HistoryQueries,
    Page,
    PageTokens,
    UserTradeRecord,
)
from services.history.store import HistoryStore
from testkit.accounts_sim import default_catalog
from testkit.history_sim import SHARDS, Flow, load

T = TypeVar("T")
PAGE_SIZES = [1, 7, 100, 1000]


@pytest.fixture
def loaded(engine: Engine, store: HistoryStore, small_flow: Flow) -> HistoryQueries:
    load(store, small_flow)
    return HistoryQueries(engine, default_catalog(SHARDS), page_token_key=os.urandom(32))


def all_pages(fetch: Callable[..., Page[T]], page_size: int, **kw: Any) -> list[T]:
    out: list[T] = []
    token = ""
    for _ in range(100_000):
        page = fetch(page_size=page_size, page_token=token, **kw)
        assert len(page.items) <= page_size
        if page.next_page_token:
            assert len(page.items) == page_size  # only the last page is short
        out.extend(page.items)
        token = page.next_page_token
        if not token:
            return out
    raise AssertionError("paging does not end")


# --- expectations computed from the events ------------------------------------------------------


def trade_sides(flow: Flow) -> list[tuple[int, str, int, str, int, int, int]]:
    """(user, market, trade_id, role, side, order, time) of every trade side."""
    out: list[tuple[int, str, int, str, int, int, int]] = []
    for e in flow.trades():
        t = e.trade_executed
        maker_side = 2 if t.taker_side == 1 else 1
        out.append(
            (t.taker_user_id, e.market, t.trade_id, "taker", t.taker_side, t.taker_order_id, e.time_us)
        )
        out.append((t.maker_user_id, e.market, t.trade_id, "maker", maker_side, t.maker_order_id, e.time_us))
    return out


def finished_orders(flow: Flow) -> list[tuple[int, str, int, int, int]]:
    """(user, market, side, order_id, finished_time) of every finished order."""
    out: list[tuple[int, str, int, int, int]] = []
    for e in flow.final_orders().values():
        s = e.order_updated
        if s.status in FINAL_STATUSES:
            out.append((e.user_id, s.market, int(s.side), s.order_id, s.updated_time_us or e.time_us))
    return out


def busiest_user(flow: Flow) -> int:
    counts: dict[int, int] = {}
    for s in trade_sides(flow):
        counts[s[0]] = counts.get(s[0], 0) + 1
    return max(counts, key=lambda u: counts[u])


def side_key(t: UserTradeRecord) -> tuple[int, int, int]:
    return (t.time_us, t.id, 1 if t.role == "taker" else 0)


# --- paging --------------------------------------------------------------------------------------


def test_user_trades_paging(loaded: HistoryQueries, small_flow: Flow) -> None:
    user = busiest_user(small_flow)
    expected = sorted((m, tid, role) for u, m, tid, role, *_ in trade_sides(small_flow) if u == user)
    assert len(expected) > 30
    for size in PAGE_SIZES:
        got = all_pages(loaded.list_user_trades, size, user_id=user)
        assert sorted((t.market, t.trade_id, t.role) for t in got) == expected
        keys = [side_key(t) for t in got]
        assert keys == sorted(keys, reverse=True) and len(set(keys)) == len(keys)  # newest first, once


def test_user_trades_filters(loaded: HistoryQueries, small_flow: Flow) -> None:
    user = busiest_user(small_flow)
    sides = [s for s in trade_sides(small_flow) if s[0] == user]
    times = sorted(s[6] for s in sides)
    start, end = times[len(times) // 4], times[3 * len(times) // 4]
    cases: list[tuple[dict[str, Any], Callable[[tuple[Any, ...]], bool]]] = [
        ({"market": "BTC_USDT"}, lambda s: s[1] == "BTC_USDT"),
        ({"side": 1}, lambda s: s[4] == 1),
        ({"side": 2, "market": "ETH_USDT"}, lambda s: s[4] == 2 and s[1] == "ETH_USDT"),
        ({"start_time_us": start}, lambda s: s[6] >= start),
        ({"end_time_us": end}, lambda s: s[6] < end),
        (
            {"start_time_us": start, "end_time_us": end, "side": 1},
            lambda s: start <= s[6] < end and s[4] == 1,
        ),
    ]
    for kw, pred in cases:
        expected = sorted((s[1], s[2], s[3]) for s in sides if pred(s))
        assert expected, kw
        got = all_pages(loaded.list_user_trades, 7, user_id=user, **kw)
        assert sorted((t.market, t.trade_id, t.role) for t in got) == expected, kw
        for t in got:
            assert t.user_id == user
            if "side" in kw:
                assert t.side == kw["side"]


def test_order_trades(loaded: HistoryQueries, small_flow: Flow) -> None:
    by_order: dict[int, list[tuple[str, int, str]]] = {}
    for _, market, tid, role, _, order, _ in trade_sides(small_flow):
        by_order.setdefault(order, []).append((market, tid, role))
    many = sorted(by_order, key=lambda o: len(by_order[o]))[-3:]
    for order in many:
        assert len(by_order[order]) >= 2
        for size in (1, 2, 100):
            got = all_pages(loaded.list_order_trades, size, order_id=order)
            assert sorted((t.market, t.trade_id, t.role) for t in got) == sorted(by_order[order])
            assert all(t.order_id == order for t in got)
            assert [side_key(t) for t in got] == sorted((side_key(t) for t in got), reverse=True)
    # an order without trades: empty; an order history never saw: NotFound
    untraded = next(oid for oid in small_flow.final_orders() if oid not in by_order)
    assert loaded.list_order_trades(order_id=untraded).items == []
    with pytest.raises(NotFound):
        loaded.list_order_trades(order_id=10**12)


def test_finished_orders_paging_and_filters(loaded: HistoryQueries, small_flow: Flow) -> None:
    finished = finished_orders(small_flow)
    user = busiest_user(small_flow)
    mine = [f for f in finished if f[0] == user]
    assert len(mine) > 10
    for size in PAGE_SIZES:
        got = all_pages(loaded.list_finished_orders, size, user_id=user)
        assert sorted(o.order_id for o in got) == sorted(f[3] for f in mine)
        keys = [(o.finished_time_us or 0, o.order_id) for o in got]
        assert keys == sorted(keys, reverse=True)
        assert all(o.status in FINAL_STATUSES for o in got)
    times = sorted(f[4] for f in mine)
    start, end = times[len(times) // 3], times[2 * len(times) // 3]
    order_cases: list[tuple[dict[str, Any], Callable[[tuple[Any, ...]], bool]]] = [
        ({"market": "SOL_USDT"}, lambda f: f[1] == "SOL_USDT"),
        ({"side": 2}, lambda f: f[2] == 2),
        ({"start_time_us": start, "end_time_us": end}, lambda f: start <= f[4] < end),
        (
            {"market": "BTC_USDT", "side": 1, "start_time_us": start},
            lambda f: f[1:3] == ("BTC_USDT", 1) and f[4] >= start,
        ),
    ]
    for kw, pred in order_cases:
        got = all_pages(loaded.list_finished_orders, 3, user_id=user, **kw)
        assert sorted(o.order_id for o in got) == sorted(f[3] for f in mine if pred(f)), kw


def test_balance_history_paging_and_filters(loaded: HistoryQueries, small_flow: Flow) -> None:
    user = busiest_user(small_flow)
    rows = [e for e in small_flow.balance_changes() if e.user_id == user]
    assert len(rows) > 100
    for size in PAGE_SIZES:
        got = all_pages(loaded.list_balance_history, size, user_id=user)
        assert sorted(b.sequence for b in got) == sorted(e.sequence for e in rows)
        keys = [(b.time_us, b.id) for b in got]
        assert keys == sorted(keys, reverse=True)
    times = sorted(e.time_us for e in rows)
    start, end = times[len(times) // 3], times[2 * len(times) // 3]
    balance_cases: list[tuple[dict[str, Any], Callable[[ev.AccountEvent], bool]]] = [
        ({"asset": "USDT"}, lambda e: e.balance_changed.asset == "USDT"),
        ({"business": "trade"}, lambda e: e.balance_changed.business == 5),
        (
            {"asset": "BTC", "business": "order_freeze"},
            lambda e: (e.balance_changed.asset, e.balance_changed.business) == ("BTC", 3),
        ),
        (
            {"start_time_us": start, "end_time_us": end, "asset": "ETH"},
            lambda e: start <= e.time_us < end and e.balance_changed.asset == "ETH",
        ),
    ]
    for kw, pred in balance_cases:
        expected = sorted(e.sequence for e in rows if pred(e))
        assert expected, kw
        got = all_pages(loaded.list_balance_history, 50, user_id=user, **kw)
        assert sorted(b.sequence for b in got) == expected, kw
    # the fee account (user 0) has its fee income
    fees = all_pages(loaded.list_balance_history, 1000, user_id=0, business="fee")
    assert fees and all(b.available_delta > 0 and BUSINESS_NAMES[b.business] == "fee" for b in fees)


def test_order_by_id_open_or_finished(loaded: HistoryQueries, small_flow: Flow) -> None:
    finals = small_flow.final_orders()
    open_id = next(oid for oid, e in finals.items() if e.order_updated.status in (2, 3))
    done_id = next(oid for oid, e in finals.items() if e.order_updated.status == 4)
    o = loaded.get_order(open_id)
    assert o.finished_time_us is None and o.status in (2, 3)
    assert (
        o.user_id == finals[open_id].user_id
        and o.remaining_lots == finals[open_id].order_updated.remaining_lots
    )
    d = loaded.get_order(done_id)
    assert d.status == 4 and d.finished_time_us is not None and d.remaining_lots == 0
    with pytest.raises(NotFound):
        loaded.get_order(10**12)
    with pytest.raises(InvalidArgument):
        loaded.get_order(0)
    with pytest.raises(InvalidArgument):
        loaded.get_order(2**63)


def test_self_trade_sides_and_time_ties(engine: Engine, store: HistoryStore) -> None:
    """Synthetic trades at one instant, one a self-trade: both of its sides, taker first, on any page size."""
    events = []
    for seq in range(1, 7):
        e = ev.MatchingEvent(source="matching-0", sequence=seq, time_us=5_000_000, market="BTC_USDT")
        t = e.trade_executed
        t.trade_id = seq
        t.price_ticks = 100 + seq
        t.amount_lots = 3
        t.quote_units = 3_000
        t.base_units = 3_000
        t.taker_side = 1  # type: ignore[assignment]
        t.taker_order_id, t.taker_user_id = 100 + seq, 9
        t.maker_order_id, t.maker_user_id = 200 + seq, 9 if seq == 4 else 8
        t.taker_fee, t.maker_fee = 6, 3
        events.append(e)
    store.ingest_matching("matching-0", events)
    q = HistoryQueries(engine, default_catalog(SHARDS), page_token_key=os.urandom(32))
    for size in (1, 2, 3, 100):
        got = all_pages(q.list_user_trades, size, user_id=9)
        assert [(t.trade_id, t.role) for t in got] == [
            (6, "taker"),
            (5, "taker"),
            (4, "taker"),
            (4, "maker"),
            (3, "taker"),
            (2, "taker"),
            (1, "taker"),
        ]
    [maker_side] = [t for t in all_pages(q.list_user_trades, 10, user_id=9, side=2)]
    assert (maker_side.trade_id, maker_side.role, maker_side.fee, maker_side.counter_order_id) == (
        4,
        "maker",
        3,
        104,
    )
    assert [t.trade_id for t in all_pages(q.list_user_trades, 2, user_id=8)] == [6, 5, 3, 2, 1]


# --- bad requests ----------------------------------------------------------------------------------


def test_bad_requests(loaded: HistoryQueries, small_flow: Flow) -> None:
    user = busiest_user(small_flow)
    first = loaded.list_user_trades(user_id=user, page_size=2)
    token = first.next_page_token
    assert token
    assert loaded.list_user_trades(user_id=user, page_size=2, page_token=token).items
    tampered = token[:3] + ("A" if token[3] != "A" else "B") + token[4:]
    for bad in ["not a token!", "abc", "A" * 401, "", tampered, token[:-2], token + "AA"]:
        if not bad:
            continue
        with pytest.raises(InvalidArgument):
            loaded.list_user_trades(user_id=user, page_size=2, page_token=bad)
    # a token is only good for the request (filters) that produced it
    with pytest.raises(InvalidArgument):
        loaded.list_user_trades(user_id=user + 1, page_size=2, page_token=token)
    with pytest.raises(InvalidArgument):
        loaded.list_user_trades(user_id=user, market="BTC_USDT", page_size=2, page_token=token)
    with pytest.raises(InvalidArgument):
        loaded.list_balance_history(user_id=user, page_token=token)
    with pytest.raises(InvalidArgument):
        loaded.list_finished_orders(user_id=user, page_token=token)
    # time ranges
    for start, end in [(10, 5), (7, 7), (-1, 0), (0, -5)]:
        with pytest.raises(InvalidArgument):
            loaded.list_user_trades(user_id=user, start_time_us=start, end_time_us=end)
        with pytest.raises(InvalidArgument):
            loaded.list_finished_orders(user_id=user, start_time_us=start, end_time_us=end)
        with pytest.raises(InvalidArgument):
            loaded.list_balance_history(user_id=user, start_time_us=start, end_time_us=end)
    # unknown market / asset: NotFound; unknown business / side: InvalidArgument
    with pytest.raises(NotFound):
        loaded.list_user_trades(user_id=user, market="XYZ_USDT")
    with pytest.raises(NotFound):
        loaded.list_finished_orders(user_id=user, market="btc_usdt")
    with pytest.raises(NotFound):
        loaded.list_balance_history(user_id=user, asset="XYZ")
    with pytest.raises(InvalidArgument):
        loaded.list_balance_history(user_id=user, business="gift")
    with pytest.raises(InvalidArgument):
        loaded.list_user_trades(user_id=user, side=3)
    with pytest.raises(InvalidArgument):
        loaded.list_user_trades(user_id=2**64 - 1)
    # page sizes: 0 = default, more than the maximum is capped
    assert len(loaded.list_balance_history(user_id=user).items) == 100
    assert len(loaded.list_balance_history(user_id=user, page_size=5000).items) <= MAX_PAGE_SIZE


def test_page_token_round_trip() -> None:
    tokens = PageTokens(os.urandom(32))
    token = tokens.encode("scope", (1_700_000_000_000_000, 42, 1))
    assert tokens.decode(token, "scope", 3) == (1_700_000_000_000_000, 42, 1)
    assert all(c.isalnum() or c in "-_" for c in token)
    with pytest.raises(InvalidArgument):
        tokens.decode(token, "other scope", 3)
    with pytest.raises(InvalidArgument):
        tokens.decode(token, "scope", 2)
    with pytest.raises(InvalidArgument):
        tokens.decode(tokens.encode("scope", (-5, 1)), "scope", 2)


# --- request bounds, reasons, page-token keys ------------------------------------------------------


@pytest.fixture
def empty_sqlite(tmp_path: Any) -> Any:
    from services.history.store import create_history_engine, migrate

    engine = create_history_engine(f"sqlite:///{tmp_path / 'history.sqlite'}")
    migrate(engine)
    yield engine
    engine.dispose()


def refused(call: Callable[[], Any], reason: Reason, error: type[Exception] = InvalidArgument) -> str:
    with pytest.raises(error) as info:
        call()
    assert getattr(info.value, "reason", None) == reason, (info.value, reason)
    message = str(info.value)
    assert len(message) < 160, message  # quotes a short prefix of the input at most
    return message


def test_every_request_field_is_bounded_with_a_precise_reason(empty_sqlite: Engine) -> None:
    q = HistoryQueries(empty_sqlite, default_catalog(SHARDS), page_token_key=os.urandom(32))
    lists = (q.list_finished_orders, q.list_user_trades, q.list_balance_history)
    OUT, LONG, BAD = Reason.VALUE_OUT_OF_RANGE, Reason.FIELD_TOO_LONG, Reason.INVALID_FIELD
    for fetch in lists:
        for user in (2**63, 2**64 - 1, -1):
            refused(lambda f=fetch, u=user: f(user_id=u), OUT)  # type: ignore[misc]
        for start, end in ((-1, 0), (0, -1), (10, 10), (11, 10)):
            refused(lambda f=fetch, s=start, e=end: f(user_id=1, start_time_us=s, end_time_us=e), OUT)  # type: ignore[misc]
        refused(lambda f=fetch: f(user_id=1, page_token="A" * 513), LONG)  # type: ignore[misc]
        refused(lambda f=fetch: f(user_id=1, page_token="%%%"), Reason.INVALID_PAGE_TOKEN)  # type: ignore[misc]
        refused(lambda f=fetch: f(user_id=1, page_token="A" * 400), Reason.INVALID_PAGE_TOKEN)  # type: ignore[misc]
        refused(lambda f=fetch: f(user_id=1, page_size=-1), OUT)  # type: ignore[misc]
    # user 0 (the fee account) has a balance history, no orders or trades of its own
    refused(lambda: q.list_finished_orders(user_id=0), OUT)
    refused(lambda: q.list_user_trades(user_id=0), OUT)
    assert q.list_balance_history(user_id=0).items == []
    # order ids
    for call in (q.get_order, lambda order_id: q.list_order_trades(order_id=order_id)):
        refused(lambda c=call: c(0), BAD)  # type: ignore[misc]
        for oid in (2**63, 2**64 - 1):
            refused(lambda c=call, o=oid: c(o), OUT)  # type: ignore[misc]
        refused(lambda c=call: c(10**12), Reason.ORDER_NOT_FOUND, NotFound)  # type: ignore[misc]
    refused(lambda: q.list_order_trades(order_id=5, page_token="B" * 600), LONG)
    # strings: bounded first, then looked up
    message = refused(lambda: q.list_user_trades(user_id=1, market="M" * 5000), LONG)
    assert "5000 characters" in message
    refused(lambda: q.list_finished_orders(user_id=1, market="NOPE_USDT"), Reason.UNKNOWN_MARKET, NotFound)
    refused(lambda: q.list_balance_history(user_id=1, asset="A" * 33), LONG)
    refused(lambda: q.list_balance_history(user_id=1, asset="NOPE"), Reason.UNKNOWN_ASSET, NotFound)
    refused(lambda: q.list_balance_history(user_id=1, business="b" * 65), LONG)
    message = refused(lambda: q.list_balance_history(user_id=1, business="lottery" * 9), BAD)
    assert "deposit" in message
    refused(lambda: q.list_user_trades(user_id=1, side=3), BAD)
    refused(lambda: q.list_finished_orders(user_id=1, side=-7), BAD)


def test_one_paging_rule(empty_sqlite: Engine) -> None:
    """limits.page_size everywhere: 0 is 100, more than 1000 is 1000 (the rest on the next pages)."""
    store = HistoryStore(empty_sqlite)
    events = []
    for seq in range(1, 1501):
        e = ev.AccountEvent(source="accounts-0", sequence=seq, time_us=seq, user_id=7)
        b = e.balance_changed
        b.asset, b.business, b.business_id = "USDT", 1, f"tx{seq}"  # type: ignore[assignment]
        b.available_delta = b.available = 1
        events.append(e)
    store.ingest_accounts("accounts-0", events)
    q = HistoryQueries(empty_sqlite, default_catalog(SHARDS), page_token_key=os.urandom(32))
    assert len(q.list_balance_history(user_id=7).items) == 100
    first = q.list_balance_history(user_id=7, page_size=100_000)
    assert len(first.items) == MAX_PAGE_SIZE == 1000 and first.next_page_token
    rest = q.list_balance_history(user_id=7, page_size=2**32 - 1, page_token=first.next_page_token)
    assert len(rest.items) == 500 and not rest.next_page_token


def test_page_tokens_are_signed_with_the_key_they_are_given(empty_sqlite: Engine) -> None:
    """A token made with one key is refused with another (the key is the exchange's secret, not a
    constant of the source)."""
    store = HistoryStore(empty_sqlite)
    store.ingest_accounts(
        "accounts-0",
        [
            ev.AccountEvent(
                source="accounts-0",
                sequence=s,
                time_us=s,
                user_id=3,
                balance_changed=ev.BalanceChanged(asset="BTC", business_id=f"t{s}", available_delta=1),
            )
            for s in range(1, 6)
        ],
    )
    catalog = default_catalog(SHARDS)
    key = os.urandom(32)
    mine = HistoryQueries(empty_sqlite, catalog, page_token_key=key)
    token = mine.list_balance_history(user_id=3, page_size=2).next_page_token
    assert token
    same_key = HistoryQueries(empty_sqlite, catalog, page_token_key=bytes(key))
    assert len(same_key.list_balance_history(user_id=3, page_size=2, page_token=token).items) == 2
    other = HistoryQueries(empty_sqlite, catalog, page_token_key=os.urandom(32))
    refused(
        lambda: other.list_balance_history(user_id=3, page_size=2, page_token=token),
        Reason.INVALID_PAGE_TOKEN,
    )
    assert PageTokens(key).encode("s", (1, 2)) != PageTokens(os.urandom(32)).encode("s", (1, 2))
    for bad in (b"", b"short", b"x" * 65):
        with pytest.raises(ValueError):
            PageTokens(bad)

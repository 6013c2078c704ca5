"""Ingest on every backend: rows + checkpoint in one transaction, exactly once under replays."""

from __future__ import annotations

import random
from typing import Any

import pytest
from exchange.v1 import events_pb2 as ev
from sqlalchemy import Boolean, Engine, SmallInteger, String, func, select

from services.history import schema
from services.history.store import GapError, HistoryStore, SourceMismatch, UnstorableEvent
from testkit.history_sim import (
    ACCOUNTS,
    Flow,
    expected_balances,
    expected_orders,
    expected_trades,
    load,
    table_rows,
)


def assert_exact(engine: Engine, store: HistoryStore, flow: Flow) -> None:
    assert table_rows(engine, schema.trades) == expected_trades(flow)
    assert table_rows(engine, schema.orders) == expected_orders(flow)
    assert table_rows(engine, schema.balance_history) == expected_balances(flow)
    assert store.checkpoints() == flow.sources


def count(engine: Engine, table: Any) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())


def test_flow_has_every_kind(small_flow: Flow) -> None:
    kinds = small_flow.kinds()
    for kind in (
        "matching.trade_executed",
        "matching.order_accepted",
        "matching.order_done",
        "accounts.balance_changed",
        "accounts.order_updated",
    ):
        assert kinds.get(kind, 0) > 50, kinds
    assert any(e.user_id == 0 for e in small_flow.balance_changes())  # the fee account


def test_ingest_in_chunks_is_exact(engine: Engine, store: HistoryStore, small_flow: Flow) -> None:
    load(store, small_flow, chunk=333)
    assert_exact(engine, store, small_flow)
    # finished orders have their finished time; open ones none
    with engine.connect() as conn:
        rows = conn.execute(select(schema.orders.c.status, schema.orders.c.finished_time_us)).all()
    assert rows
    for status, finished in rows:
        assert (finished is not None) == (status in (4, 5, 6, 7))


def test_same_batch_twice(engine: Engine, store: HistoryStore, small_flow: Flow) -> None:
    for source, events in small_flow.matching.items():
        first = store.ingest_matching(source, events)
        assert first.events == len(events) and first.skipped == 0
        again = store.ingest_matching(source, events)
        assert again.events == 0 and again.skipped == len(events) and again.checkpoint == len(events)
    a = store.ingest_accounts(ACCOUNTS, small_flow.accounts)
    b = store.ingest_accounts(ACCOUNTS, small_flow.accounts)
    assert (a.events, b.events, b.skipped) == (len(small_flow.accounts), 0, len(small_flow.accounts))
    assert_exact(engine, store, small_flow)


def test_overlapping_and_stale_batches(engine: Engine, store: HistoryStore, small_flow: Flow) -> None:
    rnd = random.Random(3)
    streams: list[tuple[str, list[Any]]] = [*small_flow.matching.items(), (ACCOUNTS, small_flow.accounts)]
    for source, events in streams:
        ingest: Any = store.ingest_accounts if source == ACCOUNTS else store.ingest_matching
        done = 0
        while done < len(events):
            # restart somewhere at or before what is stored (a reconnect resends), go some way past it
            start = max(0, done - rnd.randint(0, 300))
            end = min(len(events), done + rnd.randint(1, 400))
            result = ingest(source, events[start:end])
            assert result.skipped == done - start
            assert result.events == end - done
            done = end
            assert result.checkpoint == done == store.checkpoint(source)
            # a batch entirely at or below the checkpoint changes nothing
            old = ingest(source, events[max(0, done - 50) : done])
            assert old.events == 0 and old.checkpoint == done
    assert_exact(engine, store, small_flow)


def test_gap_is_refused_and_writes_nothing(engine: Engine, store: HistoryStore, small_flow: Flow) -> None:
    source, events = next(iter(small_flow.matching.items()))
    store.ingest_matching(source, events[:100])
    with pytest.raises(GapError):
        store.ingest_matching(source, events[101:300])  # event 101 missing
    with pytest.raises(GapError):
        store.ingest_matching(source, [*events[100:150], *events[151:200]])  # hole inside the batch
    with pytest.raises(GapError):
        store.ingest_accounts(ACCOUNTS, small_flow.accounts[5:50])  # nothing stored yet: must start at 1
    assert store.checkpoint(source) == 100
    assert store.checkpoint(ACCOUNTS) == 0
    trades_in_first_100 = sum(1 for e in events[:100] if e.WhichOneof("event") == "trade_executed")
    assert count(engine, schema.trades) == trades_in_first_100
    assert count(engine, schema.balance_history) == 0


def test_source_mismatch(store: HistoryStore, small_flow: Flow) -> None:
    events = small_flow.matching["matching-0"]
    with pytest.raises(SourceMismatch):
        store.ingest_matching("matching-1", events[:10])
    assert store.checkpoints() == {}


def test_failure_mid_batch_rolls_back(
    engine: Engine, store: HistoryStore, small_flow: Flow, monkeypatch: pytest.MonkeyPatch
) -> None:
    accounts = small_flow.accounts
    store.ingest_accounts(ACCOUNTS, accounts[:1000])
    before = (count(engine, schema.balance_history), count(engine, schema.orders))

    def boom(conn: Any, rows: Any) -> None:  # after the balance rows went in, before the checkpoint
        raise RuntimeError("crash")

    monkeypatch.setattr(store.writer, "upsert_orders", boom)
    with pytest.raises(RuntimeError):
        store.ingest_accounts(ACCOUNTS, accounts[1000:2000])
    assert (count(engine, schema.balance_history), count(engine, schema.orders)) == before
    assert store.checkpoint(ACCOUNTS) == 1000
    monkeypatch.undo()
    store.ingest_accounts(ACCOUNTS, accounts[900:])
    for source, events in small_flow.matching.items():
        store.ingest_matching(source, events)
    assert_exact(engine, store, small_flow)


def test_orders_keep_the_latest_state(engine: Engine, store: HistoryStore) -> None:
    def state(seq: int, status: int, filled: int, client: str = "c-1") -> ev.AccountEvent:
        e = ev.AccountEvent(source=ACCOUNTS, sequence=seq, time_us=1_000 + seq, user_id=5)
        s = e.order_updated
        s.order_id = 77
        s.client_order_id = client
        s.market = "BTC_USDT"
        s.side = 1  # type: ignore[assignment]
        s.type = 1  # type: ignore[assignment]
        s.price_ticks = 100
        s.amount_lots = 10
        s.filled_lots = filled
        s.remaining_lots = 10 - filled
        s.status = status  # type: ignore[assignment]
        s.created_time_us = 1_001
        s.updated_time_us = 1_000 + seq
        return e

    store.ingest_accounts(ACCOUNTS, [state(1, 1, 0), state(2, 2, 0)])
    with engine.connect() as conn:
        row = conn.execute(select(schema.orders)).one()
    assert (row.status, row.finished_time_us, row.sequence) == (2, None, 2)
    # several states of one order in one batch: the last one wins
    store.ingest_accounts(ACCOUNTS, [state(3, 3, 4), state(4, 3, 7), state(5, 4, 10)])
    with engine.connect() as conn:
        row = conn.execute(select(schema.orders)).one()
    assert (row.status, row.filled_lots, row.remaining_lots, row.finished_time_us) == (4, 10, 0, 1_005)
    assert row.client_order_id == "c-1" and row.user_id == 5 and row.created_time_us == 1_001


# (No NUL: PostgreSQL text cannot hold it, and accounts admits ids of [A-Za-z0-9_.:#/-] only.)
AWKWARD_TEXT = ["o'ne", 'two"', "back\\slash", "100%s %(x)s", "semi;--", "new\nline\r\t\x1a", "ü€🙂", ""]


def test_text_round_trips_exactly(engine: Engine, store: HistoryStore) -> None:
    """Quotes, backslashes, percent signs, control characters and non-ASCII text in client order ids
    and business ids are stored as they are on every backend (the bulk writers build SQL text or COPY
    data themselves)."""
    events = []
    for i, text in enumerate(AWKWARD_TEXT, start=1):
        e = ev.AccountEvent(source=ACCOUNTS, sequence=2 * i - 1, time_us=1_000 + i, user_id=9)
        b = e.balance_changed
        b.asset = "USDT"
        b.business = 1  # type: ignore[assignment]
        b.business_id = text
        b.available_delta = i
        b.available = i
        events.append(e)
        o = ev.AccountEvent(source=ACCOUNTS, sequence=2 * i, time_us=1_000 + i, user_id=9)
        s = o.order_updated
        s.order_id = 500 + i
        s.client_order_id = text
        s.market = "BTC_USDT"
        s.side = 1  # type: ignore[assignment]
        s.type = 1  # type: ignore[assignment]
        s.status = 2  # type: ignore[assignment]
        events.append(o)
    store.ingest_accounts(ACCOUNTS, events)
    with engine.connect() as conn:
        business_ids = conn.execute(
            select(schema.balance_history.c.business_id).order_by(schema.balance_history.c.sequence)
        ).scalars()
        client_ids = conn.execute(
            select(schema.orders.c.client_order_id).order_by(schema.orders.c.order_id)
        ).scalars()
        assert list(business_ids) == AWKWARD_TEXT
        assert list(client_ids) == AWKWARD_TEXT


# --- values a column cannot hold -------------------------------------------------------------------


def deposit(seq: int, user_id: int = 9, asset: str = "USDT", business_id: str = "tx") -> ev.AccountEvent:
    e = ev.AccountEvent(source=ACCOUNTS, sequence=seq, time_us=1_000 + seq, user_id=user_id)
    b = e.balance_changed
    b.asset = asset
    b.business = 1  # type: ignore[assignment]
    b.business_id = business_id
    b.available_delta = 5
    b.available = 5 * seq
    return e


def order_state(seq: int, order_id: int = 70, client: str = "c", side: int = 1) -> ev.AccountEvent:
    e = ev.AccountEvent(source=ACCOUNTS, sequence=seq, time_us=1_000 + seq, user_id=9)
    s = e.order_updated
    s.order_id = order_id
    s.client_order_id = client
    s.market = "BTC_USDT"
    s.side = side  # type: ignore[assignment]
    s.type = 1  # type: ignore[assignment]
    s.status = 2  # type: ignore[assignment]
    return e


def trade(seq: int, taker_user: int = 3, trade_id: int | None = None, market: str = "BTC_USDT") -> Any:
    e = ev.MatchingEvent(source="matching-0", sequence=seq, time_us=1_000 + seq, market=market)
    t = e.trade_executed
    t.trade_id = seq if trade_id is None else trade_id
    t.price_ticks, t.amount_lots, t.quote_units, t.base_units = 100, 1, 100, 1
    t.taker_side = 1  # type: ignore[assignment]
    t.taker_order_id, t.taker_user_id = 10 + seq, taker_user
    t.maker_order_id, t.maker_user_id = 20 + seq, 4
    return e


# (what is wrong, the bad event at sequence 4 of an accounts batch 1..6)
BAD_ACCOUNT_EVENTS = {
    "user_id 2**63": lambda q: deposit(q, user_id=2**63),
    "user_id 2**64-1": lambda q: deposit(q, user_id=2**64 - 1),
    "order_id 2**63": lambda q: order_state(q, order_id=2**63),
    "side beyond SMALLINT": lambda q: order_state(q, side=40_000),
    "asset longer than its column": lambda q: deposit(q, asset="A" * 17),
    "business_id longer than its column": lambda q: deposit(q, business_id="x" * 256),
    "client_order_id longer than its column": lambda q: order_state(q, client="c" * 129),
    "NUL in business_id": lambda q: deposit(q, business_id="tx\x00"),
}


@pytest.mark.parametrize("what", sorted(BAD_ACCOUNT_EVENTS))
def test_an_unstorable_account_event_is_refused_the_same_way_everywhere(
    engine: Engine, store: HistoryStore, what: str
) -> None:
    """Every backend refuses the batch holding it with UnstorableEvent naming that event, writes
    nothing of the batch (no overflow, truncation or silent corruption), and stores the events
    before it when they come alone."""
    events = [deposit(1), order_state(2, order_id=71), deposit(3)]
    events += [BAD_ACCOUNT_EVENTS[what](4), deposit(5), order_state(6, order_id=72)]
    with pytest.raises(UnstorableEvent) as info:
        store.ingest_accounts(ACCOUNTS, events)
    assert info.value.sequence == 4
    assert "event 4" in str(info.value) and len(str(info.value)) < 200
    assert store.checkpoints() == {}
    assert (count(engine, schema.balance_history), count(engine, schema.orders)) == (0, 0)
    assert store.ingest_accounts(ACCOUNTS, events[:3]).checkpoint == 3
    with pytest.raises(UnstorableEvent):
        store.ingest_accounts(ACCOUNTS, events[3:])
    assert store.checkpoint(ACCOUNTS) == 3
    assert (count(engine, schema.balance_history), count(engine, schema.orders)) == (2, 1)


def test_an_unstorable_trade_is_refused_and_the_lowest_bad_sequence_is_named(
    engine: Engine, store: HistoryStore
) -> None:
    events = [trade(1), trade(2), trade(3, market="M" * 33), trade(4, taker_user=2**63), trade(5)]
    with pytest.raises(UnstorableEvent) as info:
        store.ingest_matching("matching-0", events)
    assert info.value.sequence == 3 and "trades.market" in str(info.value)
    with pytest.raises(UnstorableEvent) as info:
        store.ingest_matching("matching-0", [trade(1), trade(2), trade(3), trade(4, taker_user=2**63)])
    assert info.value.sequence == 4 and "trades.taker_user_id = 9223372036854775808" in str(info.value)
    assert store.checkpoints() == {} and count(engine, schema.trades) == 0


def test_which_errors_are_transient(store: HistoryStore) -> None:
    """A lost connection is retried as before; data errors and refused events are not."""
    from sqlalchemy import exc as sa_exc

    dbapi = store.engine.dialect.loaded_dbapi
    lost = sa_exc.OperationalError("INSERT ...", {}, dbapi.OperationalError("server closed the connection"))
    assert store.is_transient(lost)
    assert store.is_transient(dbapi.OperationalError("lost"))  # raw, from the bulk writers
    assert store.is_transient(sa_exc.InterfaceError("SELECT 1", {}, dbapi.InterfaceError("closed")))
    assert not store.is_transient(sa_exc.IntegrityError("INSERT ...", {}, dbapi.IntegrityError("dup")))
    assert not store.is_transient(dbapi.IntegrityError("duplicate key"))
    assert not store.is_transient(dbapi.DataError("value out of range"))
    assert not store.is_transient(OverflowError("Python int too large to convert to SQLite INTEGER"))
    assert not store.is_transient(UnstorableEvent("event 4: ...", 4))
    assert not store.is_transient(GapError("gap", 4))


def test_every_column_that_can_overflow_is_checked() -> None:
    """The columns left out of CHECKED_COLUMNS come from int64 (or bool) protobuf fields, which fit
    their BIGINT columns by construction; every column fed by a uint64 or enum field, or holding text,
    is checked. Found by filling every field with a distinct value and seeing where each lands."""
    from google.protobuf.descriptor import FieldDescriptor as F

    from services.history.store import (
        BALANCE_COLUMNS,
        CHECKED_COLUMNS,
        ORDER_COLUMNS,
        TRADE_COLUMNS,
        balance_row,
        order_row,
        trade_row,
    )

    int64_like = {F.TYPE_INT64, F.TYPE_SINT64, F.TYPE_SFIXED64}
    counter = iter(range(1001, 100_000))

    def fill(msg: Any, sources: dict[Any, Any]) -> None:
        for f in msg.DESCRIPTOR.fields:
            if f.type == F.TYPE_MESSAGE:
                continue
            if f.type == F.TYPE_STRING:
                value: Any = f"s{next(counter)}"
            elif f.type == F.TYPE_BOOL:
                value = True
            else:
                value = next(counter)
            setattr(msg, f.name, value)
            sources[value] = f

    def check(table: Any, columns: tuple[str, ...], row: tuple[Any, ...], sources: dict[Any, Any]) -> None:
        for name, value in zip(columns, row, strict=True):
            column = table.c[name]
            checked = name in CHECKED_COLUMNS[table.name]
            if name == "source":
                assert value == "the-source" and not checked  # checked once per batch
                continue
            if name == "sequence":
                assert sources.get(value).name == "sequence" and not checked  # once per batch
                continue
            field = sources.get(value) if not isinstance(value, bool) else None
            if isinstance(column.type, String):
                assert checked, name
            elif field is not None and field.type in int64_like and not isinstance(column.type, SmallInteger):
                pass  # fits by construction (checked or not)
            elif not isinstance(column.type, Boolean):
                assert checked, (table.name, name, field and field.full_name)

    sources: dict[Any, Any] = {}
    m = ev.MatchingEvent()
    fill(m, sources)
    fill(m.trade_executed, sources)
    check(schema.trades, TRADE_COLUMNS, trade_row(m, "the-source"), sources)

    sources = {}
    a = ev.AccountEvent()
    fill(a, sources)
    fill(a.order_updated, sources)
    a.order_updated.status = 4  # type: ignore[assignment]  # final: finished_time_us is set
    sources[4] = None
    check(schema.orders, ORDER_COLUMNS, order_row(a), sources)

    sources = {}
    a = ev.AccountEvent()
    fill(a, sources)
    fill(a.balance_changed, sources)
    check(schema.balance_history, BALANCE_COLUMNS, balance_row(a, "the-source"), sources)

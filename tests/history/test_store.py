"""Ingest on every backend: rows + checkpoint in one transaction, exactly once under replays."""

from __future__ import annotations

import random
from typing import Any

import pytest
from exchange.v1 import events_pb2 as ev
from sqlalchemy import Engine, func, select

from services.history import schema
from services.history.store import GapError, HistoryStore, SourceMismatch
from tests.history.sim import (
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

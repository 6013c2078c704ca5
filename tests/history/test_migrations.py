"""Alembic migrations on every backend: fresh upgrade, upgrade from the previous revision with data in
it, downgrade to base and up again; the head schema matches services.history.schema."""

from __future__ import annotations

from sqlalchemy import Engine, inspect

from services.history import schema
from services.history.store import (
    HistoryStore,
    current_revision,
    downgrade,
    head_revision,
    migrate,
)
from testkit.history_sim import (
    Flow,
    expected_balances,
    expected_orders,
    expected_trades,
    load,
    table_rows,
)

TABLES = {"history_checkpoints", "trades", "orders", "balance_history"}
QUERY_INDEXES = {
    "trades": {
        "ix_trades_market_time",
        "ix_trades_taker_user_time",
        "ix_trades_maker_user_time",
        "ix_trades_taker_order",
        "ix_trades_maker_order",
    },
    "orders": {"ix_orders_user_finished", "ix_orders_user_market_finished"},
    "balance_history": {"ix_balance_user_asset_time", "ix_balance_user_time"},
}


def tables(engine: Engine) -> set[str]:
    return set(inspect(engine).get_table_names()) - {schema.VERSION_TABLE}


def indexes(engine: Engine, table: str) -> dict[str, list[str]]:
    return {str(i["name"]): [str(c) for c in i["column_names"]] for i in inspect(engine).get_indexes(table)}


def test_fresh_upgrade_to_head(engine: Engine) -> None:
    assert current_revision(engine) is None
    migrate(engine)
    assert current_revision(engine) == head_revision() == "0002"
    assert tables(engine) == TABLES
    for table_name, names in QUERY_INDEXES.items():
        found = indexes(engine, table_name)
        assert names <= set(found), (table_name, found)
    # The indexes are the ones the schema module declares (same columns, same order).
    for table in schema.TABLES:
        declared = {i.name: [c.name for c in i.columns] for i in table.indexes}
        found = indexes(engine, table.name)
        for name, columns in declared.items():
            assert found[str(name)] == columns
    # Same columns as the schema module.
    insp = inspect(engine)
    for table in schema.TABLES:
        assert [c["name"] for c in insp.get_columns(table.name)] == [c.name for c in table.columns]
    migrate(engine)  # idempotent: a restart runs it again
    assert current_revision(engine) == "0002"


def test_upgrade_from_previous_revision_keeps_rows(engine: Engine, small_flow: Flow) -> None:
    migrate(engine, "0001")
    assert current_revision(engine) == "0001"
    assert tables(engine) == TABLES
    assert not (set(indexes(engine, "trades")) & QUERY_INDEXES["trades"])
    store = HistoryStore(engine)
    load(store, small_flow)  # ingest works on 0001 already
    before = store.checkpoints()
    migrate(engine)
    assert current_revision(engine) == "0002"
    assert QUERY_INDEXES["orders"] <= set(indexes(engine, "orders"))
    assert store.checkpoints() == before == small_flow.sources
    assert table_rows(engine, schema.trades) == expected_trades(small_flow)
    assert table_rows(engine, schema.orders) == expected_orders(small_flow)
    assert table_rows(engine, schema.balance_history) == expected_balances(small_flow)


def test_downgrade_and_upgrade_again(engine: Engine, small_flow: Flow) -> None:
    migrate(engine)
    store = HistoryStore(engine)
    load(store, small_flow)
    downgrade(engine, "0001")
    assert current_revision(engine) == "0001"
    assert not (set(indexes(engine, "balance_history")) & QUERY_INDEXES["balance_history"])
    assert table_rows(engine, schema.trades) == expected_trades(small_flow)  # data survives
    downgrade(engine, "base")
    assert current_revision(engine) is None
    assert tables(engine) == set()
    migrate(engine)
    assert current_revision(engine) == "0002"
    assert tables(engine) == TABLES
    assert HistoryStore(engine).checkpoints() == {}

"""The history tables (SQLAlchemy Core). Migrations (services/history/migrations) create them; this
module is what the store and the queries use, and it must match the head revision.

Every quantity is an exact integer (BigInteger): prices in ticks, amounts in lots, money in the asset's
smallest unit, times in microseconds since the epoch. Decimal strings are made at the API edge only.

- checkpoints: the last event stored per source ("matching-0", "accounts-0"), written in the same
  transaction as the rows that event produced.
- trades: one row per TradeExecuted, both sides; unique per (market, trade_id).
- orders: the latest OrderState per order (open orders too); finished_time_us is set (and only then) when
  the status is final (FILLED, CANCELED, EXPIRED, REJECTED).
- balance_history: one row per BalanceChanged (change and resulting balance).

Surrogate `id` columns (autoincrement) make (time_us, id) a total order for keyset paging.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Index,
    Integer,
    MetaData,
    SmallInteger,
    String,
    Table,
    UniqueConstraint,
)

# SQLite: only an INTEGER PRIMARY KEY is the rowid itself (auto-incrementing, no separate key index);
# its INTEGER is 64-bit like BIGINT.
Id = BigInteger().with_variant(Integer(), "sqlite")

metadata = MetaData()

# Alembic's version table for these migrations.
VERSION_TABLE = "history_alembic_version"

checkpoints = Table(
    "history_checkpoints",
    metadata,
    Column("source", String(64), primary_key=True),
    Column("sequence", BigInteger, nullable=False),
    Column("updated_time_us", BigInteger, nullable=False),
)

trades = Table(
    "trades",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("market", String(32), nullable=False),
    Column("trade_id", BigInteger, nullable=False),
    Column("time_us", BigInteger, nullable=False),
    Column("price_ticks", BigInteger, nullable=False),
    Column("amount_lots", BigInteger, nullable=False),
    Column("quote_units", BigInteger, nullable=False),
    Column("base_units", BigInteger, nullable=False),
    Column("taker_side", SmallInteger, nullable=False),
    Column("taker_order_id", BigInteger, nullable=False),
    Column("taker_user_id", BigInteger, nullable=False),
    Column("maker_order_id", BigInteger, nullable=False),
    Column("maker_user_id", BigInteger, nullable=False),
    Column("taker_fee", BigInteger, nullable=False),
    Column("maker_fee", BigInteger, nullable=False),
    Column("source", String(64), nullable=False),
    Column("sequence", BigInteger, nullable=False),
    UniqueConstraint("market", "trade_id", name="uq_trades_market_trade_id"),
)

orders = Table(
    "orders",
    metadata,
    Column("order_id", Id, primary_key=True, autoincrement=False),
    Column("user_id", BigInteger, nullable=False),
    Column("client_order_id", String(128), nullable=False),
    Column("market", String(32), nullable=False),
    Column("side", SmallInteger, nullable=False),
    Column("type", SmallInteger, nullable=False),
    Column("time_in_force", SmallInteger, nullable=False),
    Column("post_only", Boolean, nullable=False),
    Column("self_trade_prevention", SmallInteger, nullable=False),
    Column("price_ticks", BigInteger, nullable=False),
    Column("amount_lots", BigInteger, nullable=False),
    Column("quote_budget", BigInteger, nullable=False),
    Column("filled_lots", BigInteger, nullable=False),
    Column("filled_quote_units", BigInteger, nullable=False),
    Column("remaining_lots", BigInteger, nullable=False),
    Column("fee_units", BigInteger, nullable=False),
    Column("status", SmallInteger, nullable=False),
    Column("done_detail", SmallInteger, nullable=False),
    Column("created_time_us", BigInteger, nullable=False),
    Column("updated_time_us", BigInteger, nullable=False),
    Column("expire_time_us", BigInteger, nullable=False),
    Column("maker_fee_ppm", BigInteger, nullable=False),
    Column("taker_fee_ppm", BigInteger, nullable=False),
    # NULL while the order is open.
    Column("finished_time_us", BigInteger, nullable=True),
    # The accounts event that wrote this state.
    Column("sequence", BigInteger, nullable=False),
)

balance_history = Table(
    "balance_history",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("user_id", BigInteger, nullable=False),
    Column("asset", String(16), nullable=False),
    Column("business", SmallInteger, nullable=False),
    Column("business_id", String(255), nullable=False),
    Column("available_delta", BigInteger, nullable=False),
    Column("frozen_delta", BigInteger, nullable=False),
    Column("available", BigInteger, nullable=False),
    Column("frozen", BigInteger, nullable=False),
    Column("time_us", BigInteger, nullable=False),
    Column("source", String(64), nullable=False),
    Column("sequence", BigInteger, nullable=False),
)

# Query indexes (revision 0002). Each ends with the table's key so a keyset page is one range scan.
Index("ix_trades_market_time", trades.c.market, trades.c.time_us, trades.c.id)
Index("ix_trades_taker_user_time", trades.c.taker_user_id, trades.c.time_us, trades.c.id)
Index("ix_trades_maker_user_time", trades.c.maker_user_id, trades.c.time_us, trades.c.id)
Index("ix_trades_taker_order", trades.c.taker_order_id, trades.c.time_us, trades.c.id)
Index("ix_trades_maker_order", trades.c.maker_order_id, trades.c.time_us, trades.c.id)
Index("ix_orders_user_finished", orders.c.user_id, orders.c.finished_time_us, orders.c.order_id)
Index(
    "ix_orders_user_market_finished",
    orders.c.user_id,
    orders.c.market,
    orders.c.finished_time_us,
    orders.c.order_id,
)
Index(
    "ix_balance_user_asset_time",
    balance_history.c.user_id,
    balance_history.c.asset,
    balance_history.c.time_us,
    balance_history.c.id,
)
Index("ix_balance_user_time", balance_history.c.user_id, balance_history.c.time_us, balance_history.c.id)

TABLES = (checkpoints, trades, orders, balance_history)

"""Initial tables: checkpoints, trades, orders, balance history (keys only, no query indexes).

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None

# SQLite: only an INTEGER PRIMARY KEY is the rowid (auto-incrementing, no separate key index).
_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _big(name: str, nullable: bool = False) -> sa.Column[int]:
    return sa.Column(name, sa.BigInteger(), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "history_checkpoints",
        sa.Column("source", sa.String(64), primary_key=True),
        _big("sequence"),
        _big("updated_time_us"),
    )
    op.create_table(
        "trades",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("market", sa.String(32), nullable=False),
        _big("trade_id"),
        _big("time_us"),
        _big("price_ticks"),
        _big("amount_lots"),
        _big("quote_units"),
        _big("base_units"),
        sa.Column("taker_side", sa.SmallInteger(), nullable=False),
        _big("taker_order_id"),
        _big("taker_user_id"),
        _big("maker_order_id"),
        _big("maker_user_id"),
        _big("taker_fee"),
        _big("maker_fee"),
        sa.Column("source", sa.String(64), nullable=False),
        _big("sequence"),
        sa.UniqueConstraint("market", "trade_id", name="uq_trades_market_trade_id"),
    )
    op.create_table(
        "orders",
        sa.Column("order_id", _ID, primary_key=True, autoincrement=False),
        _big("user_id"),
        sa.Column("client_order_id", sa.String(128), nullable=False),
        sa.Column("market", sa.String(32), nullable=False),
        sa.Column("side", sa.SmallInteger(), nullable=False),
        sa.Column("type", sa.SmallInteger(), nullable=False),
        sa.Column("time_in_force", sa.SmallInteger(), nullable=False),
        sa.Column("post_only", sa.Boolean(), nullable=False),
        sa.Column("self_trade_prevention", sa.SmallInteger(), nullable=False),
        _big("price_ticks"),
        _big("amount_lots"),
        _big("quote_budget"),
        _big("filled_lots"),
        _big("filled_quote_units"),
        _big("remaining_lots"),
        _big("fee_units"),
        sa.Column("status", sa.SmallInteger(), nullable=False),
        sa.Column("done_detail", sa.SmallInteger(), nullable=False),
        _big("created_time_us"),
        _big("updated_time_us"),
        _big("expire_time_us"),
        _big("maker_fee_ppm"),
        _big("taker_fee_ppm"),
        _big("finished_time_us", nullable=True),
        _big("sequence"),
    )
    op.create_table(
        "balance_history",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        _big("user_id"),
        sa.Column("asset", sa.String(16), nullable=False),
        sa.Column("business", sa.SmallInteger(), nullable=False),
        sa.Column("business_id", sa.String(255), nullable=False),
        _big("available_delta"),
        _big("frozen_delta"),
        _big("available"),
        _big("frozen"),
        _big("time_us"),
        sa.Column("source", sa.String(64), nullable=False),
        _big("sequence"),
    )


def downgrade() -> None:
    op.drop_table("balance_history")
    op.drop_table("orders")
    op.drop_table("trades")
    op.drop_table("history_checkpoints")

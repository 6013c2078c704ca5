"""Query indexes: trades by market / taker / maker (with time) and by order; finished orders by user
(and market); balance history by user (and asset). Each ends with the table's key, so a keyset page
(newest first) is a single index range scan.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | None = None
depends_on: str | None = None

INDEXES: list[tuple[str, str, list[str]]] = [
    ("ix_trades_market_time", "trades", ["market", "time_us", "id"]),
    ("ix_trades_taker_user_time", "trades", ["taker_user_id", "time_us", "id"]),
    ("ix_trades_maker_user_time", "trades", ["maker_user_id", "time_us", "id"]),
    ("ix_trades_taker_order", "trades", ["taker_order_id", "time_us", "id"]),
    ("ix_trades_maker_order", "trades", ["maker_order_id", "time_us", "id"]),
    ("ix_orders_user_finished", "orders", ["user_id", "finished_time_us", "order_id"]),
    ("ix_orders_user_market_finished", "orders", ["user_id", "market", "finished_time_us", "order_id"]),
    ("ix_balance_user_asset_time", "balance_history", ["user_id", "asset", "time_us", "id"]),
    ("ix_balance_user_time", "balance_history", ["user_id", "time_us", "id"]),
]


def upgrade() -> None:
    for name, table, columns in INDEXES:
        op.create_index(name, table, columns)


def downgrade() -> None:
    for name, table, _ in reversed(INDEXES):
        op.drop_index(name, table_name=table)

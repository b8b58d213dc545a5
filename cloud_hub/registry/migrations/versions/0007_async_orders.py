"""Asynchronous training orders: the hub's ledger of which device got which order and base
version, and whether its update is held, folded, spent or refused, so a hub restart keeps it.

Revision ID: 0007_async_orders
Revises: 0006_rollout_target_bytes
Create Date: 2026-12-04 23:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007_async_orders"
down_revision: str | Sequence[str] | None = "0006_rollout_target_bytes"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "async_orders",
        sa.Column("order_id", sa.String(length=128), nullable=False),
        sa.Column("run_id", sa.String(length=128), nullable=False),
        sa.Column("node_id", sa.String(length=24), nullable=False),
        sa.Column("device_id", sa.String(length=128), nullable=True),
        sa.Column("base_version", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("buffer", sa.Integer(), nullable=True),
        sa.Column("labelled_samples", sa.Float(), nullable=True),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("order_id", name=op.f("pk_async_orders")),
    )
    op.create_index(op.f("ix_async_orders_run_id"), "async_orders", ["run_id"], unique=False)
    op.create_index(op.f("ix_async_orders_device_id"), "async_orders", ["device_id"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_async_orders_device_id"), table_name="async_orders")
    op.drop_index(op.f("ix_async_orders_run_id"), table_name="async_orders")
    op.drop_table("async_orders")

"""Removed devices: the ids an operator deleted, refused by the ingest until re-enrolled.

Without them a deleted device that is still online comes back within seconds as a stub
without class or labels (its next status creates it), and class-targeted rollouts skip it.

Revision ID: 0004_removed_devices
Revises: 0003_device_facts
Create Date: 2026-12-04 21:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004_removed_devices"
down_revision: str | Sequence[str] | None = "0003_device_facts"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "removed_devices",
        sa.Column("device_id", sa.String(length=128), nullable=False),
        sa.Column("removed_at", sa.Float(), nullable=False),
        sa.Column("removed_by", sa.String(length=128), nullable=False),
        sa.PrimaryKeyConstraint("device_id", name=op.f("pk_removed_devices")),
    )


def downgrade() -> None:
    op.drop_table("removed_devices")

"""Bundle bytes per rollout target: what the rollout sent each device, and what full bundles
would have cost, so a rollout's delivery totals read the same from every hub process.

Revision ID: 0006_rollout_target_bytes
Revises: 0005_enrollment_tables
Create Date: 2026-12-04 22:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006_rollout_target_bytes"
down_revision: str | Sequence[str] | None = "0005_enrollment_tables"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("rollout_targets", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("bytes_sent", sa.BigInteger(), nullable=False, server_default="0")
        )
        batch_op.add_column(
            sa.Column("bytes_full", sa.BigInteger(), nullable=False, server_default="0")
        )


def downgrade() -> None:
    with op.batch_alter_table("rollout_targets", schema=None) as batch_op:
        batch_op.drop_column("bytes_full")
        batch_op.drop_column("bytes_sent")

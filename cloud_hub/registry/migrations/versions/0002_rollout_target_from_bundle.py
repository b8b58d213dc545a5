"""Rollout targets remember what each device ran before the rollout (its rollback target).

Revision ID: 0002_target_from
Revises: 0001
Create Date: 2026-12-04 20:40:00

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0002_target_from"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("rollout_targets", schema=None) as batch_op:
        batch_op.add_column(sa.Column("from_bundle_id", sa.String(length=128), nullable=True))
        batch_op.add_column(sa.Column("from_version", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("from_sha256", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("rollout_targets", schema=None) as batch_op:
        batch_op.drop_column("from_sha256")
        batch_op.drop_column("from_version")
        batch_op.drop_column("from_bundle_id")

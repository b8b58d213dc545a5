"""An index on the audit log's action: a rollout's history (action ``rollout-move``) is read
on every render of the dashboard's rollout page, and would otherwise scan every request the
API ever audited.

Revision ID: 0008_audit_action_index
Revises: 0007_async_orders
Create Date: 2026-12-05 06:05:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0008_audit_action_index"
down_revision: str | Sequence[str] | None = "0007_async_orders"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("audit_log", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_audit_log_action"), ["action"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("audit_log", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_audit_log_action"))

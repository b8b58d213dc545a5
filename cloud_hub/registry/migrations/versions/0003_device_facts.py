"""Device facts: what a device reports about its CPU/GPU in ``hello`` (issue 12).

``facts`` holds ``shared.device_facts.DeviceFacts`` (CPU model, ISA flags, GPU model,
compute capability, TensorRT version); ``target`` is the int8 target those facts imply
(``x86-avx2`` / ``x86-vnni`` / ``arm64-neon`` / ``tensorrt``), indexed so a rollout can find
the devices an artifact was not built for.

Revision ID: 0003_device_facts
Revises: 0002_target_from
Create Date: 2026-12-04 21:20:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003_device_facts"
down_revision: str | Sequence[str] | None = "0002_target_from"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("devices") as batch:
        batch.add_column(sa.Column("facts", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("target", sa.String(length=32), nullable=True))
        batch.create_index(op.f("ix_devices_target"), ["target"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("devices") as batch:
        batch.drop_index(op.f("ix_devices_target"))
        batch.drop_column("target")
        batch.drop_column("facts")

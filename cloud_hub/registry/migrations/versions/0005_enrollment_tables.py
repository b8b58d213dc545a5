"""Enrollment tokens, enrolled devices and revoked certificates join the migrations.

Hubs before this revision created these three tables beside the migrations when enrollment
first opened the database: on such a database this revision leaves them as they are.

Revision ID: 0005_enrollment_tables
Revises: 0004_removed_devices
Create Date: 2026-12-04 21:45:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005_enrollment_tables"
down_revision: str | Sequence[str] | None = "0004_removed_devices"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLES = ("enrollment_tokens", "enrolled_devices", "revoked_certificates")


def _enrollment_tokens() -> None:
    op.create_table(
        "enrollment_tokens",
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("device_class", sa.String(length=128), nullable=False),
        sa.Column("labels", sa.JSON(), nullable=False),
        sa.Column("device_id", sa.String(length=128), nullable=True),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("expires_at", sa.Float(), nullable=False),
        sa.Column("used_at", sa.Float(), nullable=True),
        sa.Column("used_by", sa.String(length=128), nullable=True),
        sa.PrimaryKeyConstraint("token_hash", name=op.f("pk_enrollment_tokens")),
    )


def _enrolled_devices() -> None:
    op.create_table(
        "enrolled_devices",
        sa.Column("device_id", sa.String(length=128), nullable=False),
        sa.Column("device_class", sa.String(length=128), nullable=False),
        sa.Column("labels", sa.JSON(), nullable=False),
        sa.Column("cert_serial", sa.String(length=64), nullable=False),
        sa.Column("cert_fingerprint", sa.String(length=80), nullable=False),
        sa.Column("cert_not_after", sa.Float(), nullable=False),
        sa.Column("enrolled_at", sa.Float(), nullable=False),
        sa.Column("token_id", sa.String(length=16), nullable=False),
        sa.Column("revoked_at", sa.Float(), nullable=True),
        sa.Column("revision", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("device_id", name=op.f("pk_enrolled_devices")),
    )


def _revoked_certificates() -> None:
    op.create_table(
        "revoked_certificates",
        sa.Column("cert_serial", sa.String(length=64), nullable=False),
        sa.Column("device_id", sa.String(length=128), nullable=False),
        sa.Column("revoked_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("cert_serial", name=op.f("pk_revoked_certificates")),
    )


def upgrade() -> None:
    existing = set(sa.inspect(op.get_bind()).get_table_names())
    for name, create in zip(
        TABLES, (_enrollment_tokens, _enrolled_devices, _revoked_certificates), strict=True
    ):
        if name not in existing:  # created beside the migrations by an older hub
            create()


def downgrade() -> None:
    for name in reversed(TABLES):
        op.drop_table(name)

"""Enrollment tables come from the registry's migrations (0005), and an older hub's database,
whose enrollment tables were created beside the migrations, upgrades without losing a row."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

from alembic import command
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, inspect, text

from cloud_hub.enrollment import SqlEnrollmentRepository, TokenRecord
from cloud_hub.registry import open_registry
from cloud_hub.registry.database import alembic_config

ENROLLMENT_TABLES = {"enrollment_tokens", "enrolled_devices", "revoked_certificates"}
T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)

# what ``create_all`` made before the tables joined the migrations
_OLD_DDL = (
    "CREATE TABLE enrollment_tokens (token_hash VARCHAR(64) NOT NULL PRIMARY KEY, "
    "device_class VARCHAR(128) NOT NULL, labels JSON NOT NULL, device_id VARCHAR(128), "
    "created_at FLOAT NOT NULL, expires_at FLOAT NOT NULL, used_at FLOAT, used_by VARCHAR(128))",
    "CREATE TABLE enrolled_devices (device_id VARCHAR(128) NOT NULL PRIMARY KEY, "
    "device_class VARCHAR(128) NOT NULL, labels JSON NOT NULL, cert_serial VARCHAR(64) NOT NULL, "
    "cert_fingerprint VARCHAR(80) NOT NULL, cert_not_after FLOAT NOT NULL, "
    "enrolled_at FLOAT NOT NULL, token_id VARCHAR(16) NOT NULL, revoked_at FLOAT, "
    "revision BIGINT NOT NULL)",
    "CREATE TABLE revoked_certificates (cert_serial VARCHAR(64) NOT NULL PRIMARY KEY, "
    "device_id VARCHAR(128) NOT NULL, revoked_at FLOAT NOT NULL)",
)


def _head(url: str) -> str | None:
    return ScriptDirectory.from_config(alembic_config(url)).get_current_head()


def _token(token_hash: str) -> TokenRecord:
    return TokenRecord(
        token_hash=token_hash,
        device_class="rpi4",
        created_at=T0,
        expires_at=T0 + timedelta(days=1),
        labels={"site": "lab"},
    )


def test_a_fresh_registry_has_the_enrollment_tables(tmp_path: Path) -> None:
    registry = open_registry(f"sqlite:///{tmp_path / 'hub.db'}")
    try:
        assert set(inspect(registry.engine).get_table_names()) >= ENROLLMENT_TABLES
        repo = SqlEnrollmentRepository(registry.engine, migrate=False)
        repo.add_token(_token("a" * 64))
        assert repo.get_token("a" * 64) == _token("a" * 64)
    finally:
        registry.close()


def test_a_bare_database_is_migrated_by_the_repository(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'bare.db'}"
    engine = create_engine(url)
    SqlEnrollmentRepository(engine)
    with engine.connect() as conn:
        version = conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one()
    assert version == _head(url)
    assert set(inspect(engine).get_table_names()) >= ENROLLMENT_TABLES
    engine.dispose()


def test_tables_made_beside_the_migrations_are_kept(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = create_engine(url)
    with engine.begin() as conn:
        cfg = alembic_config(url)
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0004_removed_devices")
        for ddl in _OLD_DDL:
            conn.execute(text(ddl))
    SqlEnrollmentRepository(engine, migrate=False).add_token(_token("b" * 64))
    engine.dispose()

    registry = open_registry(url)  # runs 0005 on the old database
    try:
        with registry.engine.connect() as conn:
            version = conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one()
        assert version == _head(url)
        repo = SqlEnrollmentRepository(registry.engine, migrate=False)
        assert repo.get_token("b" * 64) == _token("b" * 64)
    finally:
        registry.close()

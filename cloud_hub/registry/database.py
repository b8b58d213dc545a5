"""Opening the registry: engine, session scope and programmatic Alembic migrations."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import StaticPool

from cloud_hub.errors import HubConfigError, RegistryError

__all__ = ["MIGRATIONS_DIR", "Registry", "Session", "migrate_schema", "open_registry"]

# ``Session`` (one transaction, from :meth:`Registry.session`) is what every repository
# function takes; the rest of the hub names its type through this module.

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")  # readers never block the ingest writer
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA busy_timeout=15000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def _make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        memory = url in ("sqlite://", "sqlite:///:memory:")
        if not memory:
            path = url.split("///", 1)[-1]
            if path:
                Path(path).expanduser().parent.mkdir(parents=True, exist_ok=True)
        kwargs: dict[str, Any] = {"connect_args": {"check_same_thread": False, "timeout": 15}}
        if memory:
            kwargs["poolclass"] = StaticPool
        engine = create_engine(url, **kwargs)
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    if url.startswith("postgresql"):
        return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=10)
    raise HubConfigError(
        f"unsupported database url {url!r}: use sqlite:///PATH or postgresql+psycopg://"
    )


@dataclass
class Registry:
    """An open registry database; :meth:`session` is the only way in."""

    url: str
    engine: Engine
    _factory: sessionmaker[Session]

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @contextmanager
    def session(self) -> Iterator[Session]:
        """One transaction: committed when the block ends, rolled back on any error."""
        session = self._factory()
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()

    def ping(self) -> bool:
        try:
            with self.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            return True
        except SQLAlchemyError:
            return False

    def close(self) -> None:
        self.engine.dispose()


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def open_registry(url: str, *, migrate: bool = True) -> Registry:
    """Open (and by default migrate to the newest schema) the registry at ``url``.

    ``url`` is ``sqlite:///path/hub.db`` (the zero-setup default) or
    ``postgresql+psycopg://user@host:port/db``.
    """
    engine = _make_engine(url)
    if migrate:
        try:
            migrate_schema(engine)
        except RegistryError:
            engine.dispose()
            raise
    factory = sessionmaker(engine, expire_on_commit=False)
    return Registry(url=url, engine=engine, _factory=factory)


def migrate_schema(engine: Engine) -> None:
    """Bring the database behind ``engine`` to the newest schema (the one way tables are
    created: every table, the enrollment ones included, comes from a migration)."""
    url = engine.url.render_as_string(hide_password=False)
    started = time.monotonic()
    alembic_log = logging.getLogger("alembic")
    level = alembic_log.level
    alembic_log.setLevel(logging.WARNING)  # one line per open is noise in every CLI call
    try:
        with engine.begin() as conn:
            cfg = alembic_config(url)
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")
    except SQLAlchemyError as exc:
        raise RegistryError(f"cannot migrate registry at {_redact(url)}: {exc}") from exc
    finally:
        alembic_log.setLevel(level)
    log.debug("registry migrated in %.2fs", time.monotonic() - started)


def _redact(url: str) -> str:
    head, sep, tail = url.partition("@")
    if not sep or ":" not in head.split("//", 1)[-1]:
        return url
    scheme, _, cred = head.partition("//")
    return f"{scheme}//{cred.split(':', 1)[0]}:***@{tail}"

"""Registry backends shared by the suites: ``registry`` runs a test on SQLite and PostgreSQL.

PostgreSQL gets one fresh database per test session (dropped at the end); tables are
emptied between tests. Without a reachable server the PostgreSQL cases are skipped with
the reason shown.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from cloud_hub.registry import Registry, open_registry
from cloud_hub.registry.tables import Base
from tests.skip_policy import ALLOWED_SKIP_PREFIXES, judge_skips

PG_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    name = f"fedfleet_reg_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    except sa.exc.OperationalError as exc:
        admin.dispose()
        pytest.skip(f"PostgreSQL not reachable at {PG_ADMIN_URL}: {exc.__class__.__name__}")
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name
    try:
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def registry(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Registry]:
    if request.param == "sqlite":
        reg = open_registry(f"sqlite:///{tmp_path / 'hub.db'}")
    else:
        url = request.getfixturevalue("pg_url")
        reg = open_registry(url)
        with reg.engine.begin() as conn:
            names = ", ".join(f'"{t.name}"' for t in Base.metadata.sorted_tables)
            conn.execute(sa.text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))
    try:
        yield reg
    finally:
        reg.close()


# --- skip policy: a run with a non-hardware skip fails (see tests/skip_policy.py) ----------


def _skip_reports(terminalreporter: Any) -> list[tuple[str, str]]:
    pairs = []
    for rep in terminalreporter.stats.get("skipped", []):
        reason = rep.longrepr[2] if isinstance(rep.longrepr, tuple) else str(rep.longrepr)
        pairs.append((rep.nodeid, reason))
    return pairs


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: Any) -> None:
    verdict = judge_skips(_skip_reports(terminalreporter))
    if verdict.allowed:
        terminalreporter.write_sep("-", f"allowed hardware skips: {len(verdict.allowed)}")
        for nodeid, reason in verdict.allowed:
            terminalreporter.write_line(f"{nodeid}: {reason}")
    if verdict.refused:
        terminalreporter.write_sep("=", f"REFUSED SKIPS: {len(verdict.refused)}", red=True)
        for nodeid, reason in verdict.refused:
            terminalreporter.write_line(f"{nodeid}: {reason}")
        terminalreporter.write_line(
            "only skips whose reason starts with one of "
            f"{', '.join(repr(p) for p in ALLOWED_SKIP_PREFIXES)} are allowed: "
            "install or start what these tests need"
        )
        config._fedfleet_refused_skips = len(verdict.refused)


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is None:
        return
    if judge_skips(_skip_reports(reporter)).refused and exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED

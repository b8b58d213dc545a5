"""Private helpers of the repositories: row → record conversion and portable upserts."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from typing import Any, TypeVar, cast

from sqlalchemy import Table, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

R = TypeVar("R")

__all__ = ["existing_keys", "insert_ignore", "portable_insert", "table_of", "to_record"]


def table_of(mapped: type) -> Table:
    """The Core ``Table`` of a mapped class (typed for mypy)."""
    return cast(Table, mapped.__table__)  # type: ignore[attr-defined]


def to_record(cls: type[R], row: Any, **overrides: Any) -> R:
    """Copy the dataclass fields of ``cls`` from the same-named attributes of ``row``."""
    values = {
        f.name: overrides[f.name] if f.name in overrides else getattr(row, f.name)
        for f in dataclasses.fields(cls)  # type: ignore[arg-type]
        if f.name in overrides or hasattr(row, f.name)
    }
    return cls(**values)


def portable_insert(session: Session, table: Table) -> Any:
    """``INSERT`` with ``ON CONFLICT`` support on both backends."""
    name = session.get_bind().dialect.name
    if name == "postgresql":
        return postgresql.insert(table)
    if name == "sqlite":
        return sqlite.insert(table)
    raise NotImplementedError(f"dialect {name} not supported")


def insert_ignore(
    session: Session, table: Table, rows: Sequence[dict[str, Any]], keys: Sequence[str]
) -> None:
    """Insert ``rows``, silently skipping those whose ``keys`` already exist."""
    if not rows:
        return
    stmt = portable_insert(session, table).on_conflict_do_nothing(index_elements=list(keys))
    session.execute(stmt, list(rows))


def existing_keys(session: Session, column: Any, values: Iterable[str]) -> set[str]:
    """Which of ``values`` are present in ``column`` (queried in slices)."""
    wanted = list(dict.fromkeys(values))
    found: set[str] = set()
    for i in range(0, len(wanted), 500):
        chunk = wanted[i : i + 500]
        found.update(session.scalars(select(column).where(column.in_(chunk))))
    return found

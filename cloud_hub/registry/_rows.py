"""Private helpers of the repositories: row → record conversion and portable upserts."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, TypeVar, cast

from sqlalchemy import ColumnElement, String, Table, any_, literal, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from cloud_hub.registry._row_arrays import is_postgresql

R = TypeVar("R")

__all__ = [
    "existing_keys",
    "insert_ignore",
    "matching_slices",
    "portable_insert",
    "table_of",
    "to_record",
]

KEYS_PER_IN_LIST = 500  # SQLite: well under its limit of bound parameters


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


def matching_slices(session: Session, column: Any, values: Iterable[str]) -> Iterator[Any]:
    """Conditions that, run one query each, select the rows whose ``column`` is in ``values``.

    PostgreSQL: one condition, ``column = ANY(:array)`` (one parameter, one plan, however many
    values; an ``IN`` list of thousands of parameters costs several times more to parse and
    plan). SQLite: ``IN`` lists of at most :data:`KEYS_PER_IN_LIST` values."""
    wanted = list(dict.fromkeys(values))
    if not wanted:
        return
    if is_postgresql(session):
        array: ColumnElement[Any] = literal(wanted, postgresql.ARRAY(String()))
        yield column == any_(array)
        return
    for i in range(0, len(wanted), KEYS_PER_IN_LIST):
        yield column.in_(wanted[i : i + KEYS_PER_IN_LIST])


def existing_keys(
    session: Session, column: Any, values: Iterable[str], *where: ColumnElement[bool]
) -> set[str]:
    """Which of ``values`` are present in ``column`` (among the rows matching ``where``)."""
    found: set[str] = set()
    for among in matching_slices(session, column, values):
        found.update(session.scalars(select(column).where(among, *where)))
    return found

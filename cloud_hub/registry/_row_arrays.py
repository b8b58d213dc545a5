"""Set-based writes on PostgreSQL: a batch of rows as one statement over ``unnest`` of arrays.

``executemany`` runs one statement per row on the server: psycopg pipelines them, but each
row is still bound, sent, planned and executed on its own, so an ingest batch of 1,000
devices costs 1,000 statements per writer. Bound as one array per column and read back
through ``unnest(...) AS name(columns)``, the same rows are one statement with one parameter
per column, whatever their number. SQLite runs ``executemany`` inside the process (no round
trips), so the writers keep it there: :func:`is_postgresql` picks the form.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import bindparam, cast, column, func
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.selectable import TableValuedAlias
from sqlalchemy.types import JSON, Text, TypeEngine

__all__ = ["RowArrays", "is_postgresql"]


def is_postgresql(session: Session) -> bool:
    """Whether ``session`` writes to PostgreSQL (set-based statements) or not (executemany)."""
    return session.get_bind().dialect.name == "postgresql"


@dataclass(frozen=True)
class RowArrays:
    """Rows of named, typed columns bound as one array per column.

    :attr:`rows` is the ``FROM`` item a statement reads them from (``rows.c.<name>``); JSON
    columns travel as text and are cast back, see :meth:`value`. :meth:`bind` turns row
    tuples (in the order of ``columns``) into the statement's parameters.
    """

    name: str
    columns: tuple[tuple[str, TypeEngine[Any]], ...]
    rows: TableValuedAlias = field(init=False, compare=False)

    def __post_init__(self) -> None:
        arrays = [
            cast(bindparam(self._param(c)), ARRAY(self._wire_type(t))) for c, t in self.columns
        ]
        typed = [column(c, self._wire_type(t)) for c, t in self.columns]
        rows = func.unnest(*arrays).table_valued(*typed).render_derived(name=self.name)
        object.__setattr__(self, "rows", rows)

    def value(self, name: str) -> ColumnElement[Any]:
        """Column ``name`` of the rows in its declared type (JSON cast back from text)."""
        declared = dict(self.columns)[name]
        col: ColumnElement[Any] = self.rows.c[name]
        return cast(col, declared) if isinstance(declared, JSON) else col

    def bind(self, rows: Iterable[Sequence[object]]) -> dict[str, list[object]]:
        """The parameters of ``rows``: one list per column (JSON values serialized)."""
        arrays: list[list[object]] = [[] for _ in self.columns]
        json_at = [isinstance(t, JSON) for _, t in self.columns]
        for row in rows:
            for i, item in enumerate(row):
                arrays[i].append(json.dumps(item) if json_at[i] and item is not None else item)
        return {self._param(c): values for (c, _), values in zip(self.columns, arrays, strict=True)}

    def _param(self, column_name: str) -> str:
        return f"{self.name}_{column_name}"

    @staticmethod
    def _wire_type(declared: TypeEngine[Any]) -> TypeEngine[Any]:
        return Text() if isinstance(declared, JSON) else declared

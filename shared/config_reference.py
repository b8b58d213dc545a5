"""Markdown reference tables generated from configuration dataclasses (pure).

Each side describes its TOML file as :class:`ReferenceSection` values: a dataclass (names,
types and defaults come from it, so they cannot go stale), the TOML table it is read from
and one sentence per key. A key without a sentence, or a sentence for a key the dataclass
does not have, is an error: adding a setting without documenting it fails the build.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import PurePath
from typing import Any

from shared.errors import ConfigError

__all__ = ["ReferenceRow", "ReferenceSection", "render_reference", "rows_of"]


@dataclass(frozen=True)
class ReferenceRow:
    """One documented key."""

    key: str
    type: str
    default: str
    doc: str
    flag: str = ""
    env: str = ""


@dataclass(frozen=True)
class ReferenceSection:
    """One TOML table (``""``: the top level) and its keys."""

    table: str
    intro: str
    rows: tuple[ReferenceRow, ...]


def _toml_value(value: Any) -> str:
    if value is None:
        return "(unset)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Enum):
        value = value.value
    if isinstance(value, PurePath):
        value = str(value)
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{}" if not value else json.dumps(value, sort_keys=True)
    if isinstance(value, str):
        return json.dumps(value)
    return repr(value)


def _default_of(f: dataclasses.Field[Any]) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def rows_of(
    cls: type,
    docs: Mapping[str, str],
    *,
    skip: Sequence[str] = (),
    extra: Sequence[ReferenceRow] = (),
    flags: Mapping[str, tuple[str, str]] | None = None,
    defaults: Mapping[str, str] | None = None,
) -> tuple[ReferenceRow, ...]:
    """Rows for the fields of dataclass ``cls`` (minus ``skip``) plus ``extra``.

    ``docs`` must describe exactly the rows produced; ``flags`` maps a key to its
    (flag, environment variable); ``defaults`` overrides how a default is shown.
    """
    rows: list[ReferenceRow] = list(extra)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        value = _default_of(f)
        shown = "(required)" if value is dataclasses.MISSING else _toml_value(value)
        rows.append(
            ReferenceRow(
                key=f.name,
                type=str(f.type),
                default=(defaults or {}).get(f.name, shown),
                doc=docs.get(f.name, ""),
            )
        )
    keys = {r.key for r in rows}
    missing = sorted(k for k in keys if not (docs.get(k) or _extra_doc(extra, k)))
    unknown = sorted(set(docs) - keys)
    if missing or unknown:
        raise ConfigError(
            f"{cls.__name__} reference: undocumented {missing}, documented but absent {unknown}"
        )
    flag_map = flags or {}
    return tuple(
        dataclasses.replace(
            r,
            doc=r.doc or docs[r.key],
            flag=flag_map.get(r.key, ("", ""))[0],
            env=flag_map.get(r.key, ("", ""))[1],
        )
        for r in rows
    )


def _extra_doc(extra: Sequence[ReferenceRow], key: str) -> str:
    return next((r.doc for r in extra if r.key == key), "")


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_reference(title: str, preamble: str, sections: Sequence[ReferenceSection]) -> str:
    """The Markdown document: one table per TOML table."""
    with_flags = any(r.flag or r.env for s in sections for r in s.rows)
    lines = [f"# {title}", "", preamble.strip(), ""]
    for section in sections:
        lines += [f"## `[{section.table}]`" if section.table else "## Top level", ""]
        if section.intro:
            lines += [section.intro.strip(), ""]
        if with_flags:
            lines += [
                "| key | type | default | flag | environment | meaning |",
                "| --- | --- | --- | --- | --- | --- |",
            ]
        else:
            lines += ["| key | type | default | meaning |", "| --- | --- | --- | --- |"]
        for r in section.rows:
            cells = [f"`{r.key}`", f"`{_cell(r.type)}`", f"`{_cell(r.default)}`"]
            if with_flags:
                cells += [f"`{r.flag}`" if r.flag else "", f"`{r.env}`" if r.env else ""]
            cells.append(_cell(r.doc))
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)

"""Writing TOML: the one emitter for the TOML files fedfleet writes (``tomllib`` only reads).

:func:`dumps` writes a document of plain values — strings, paths, booleans, integers, finite
floats, lists of those, and tables (mappings) nested in tables — so that ``tomllib.loads``
gives the same document back. Top-level keys come first, then each table under its
``[dotted.header]``. Pure: text out, no files.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from pathlib import PurePath
from typing import Any

from shared.errors import ConfigError

__all__ = ["dumps", "toml_string", "toml_value"]

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_ESCAPES = {
    '"': '\\"',
    "\\": "\\\\",
    "\b": "\\b",
    "\t": "\\t",
    "\n": "\\n",
    "\f": "\\f",
    "\r": "\\r",
}


def toml_string(value: str | PurePath) -> str:
    """A TOML basic string. Not ``json.dumps``: JSON escapes astral characters as surrogate
    pairs, which TOML refuses."""
    out = []
    for ch in str(value):
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def toml_value(value: Any) -> str:
    """One value (not a table) as TOML; ``ConfigError`` for what TOML cannot hold."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ConfigError(f"cannot write {value!r} to TOML (not finite)")
        return repr(value)
    if isinstance(value, str | PurePath):
        return toml_string(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise ConfigError(f"cannot write {value!r} to TOML")


def _key(key: str) -> str:
    if not isinstance(key, str):
        raise ConfigError(f"TOML keys are strings, not {key!r}")
    return key if _BARE_KEY.fullmatch(key) else toml_string(key)


def _table(lines: list[str], path: tuple[str, ...], table: Mapping[str, Any]) -> None:
    scalars = {k: v for k, v in table.items() if not isinstance(v, Mapping)}
    tables = {k: v for k, v in table.items() if isinstance(v, Mapping)}
    if path and (scalars or not tables):
        lines += ["", "[" + ".".join(_key(p) for p in path) + "]"]
    lines += [f"{_key(k)} = {toml_value(v)}" for k, v in scalars.items()]
    for name, sub in tables.items():
        _table(lines, (*path, name), sub)


def dumps(document: Mapping[str, Any], *, header: Sequence[str] = ()) -> str:
    """``document`` as TOML text; each ``header`` line becomes a leading ``#`` comment."""
    lines = [f"# {line}" for line in header]
    _table(lines, (), document)
    return "\n".join(lines).lstrip("\n") + "\n"

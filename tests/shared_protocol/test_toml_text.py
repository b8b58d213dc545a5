"""The one TOML emitter: what it writes reads back as the same document, and what TOML cannot
hold is refused with a clear error instead of being written wrong."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.errors import ConfigError
from shared.toml_text import dumps

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

_scalars = (
    st.text()  # every code point, quotes, newlines, control and astral characters included
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
)
_values = _scalars | st.lists(_scalars, max_size=4)
_keys = st.text(min_size=1, max_size=12)
_tables = st.recursive(
    st.dictionaries(_keys, _values, max_size=4),
    lambda inner: st.dictionaries(_keys, _values | inner, max_size=4),
    max_leaves=12,
)


@given(_tables)
def test_what_is_written_reads_back_the_same(document: dict[str, Any]) -> None:
    assert tomllib.loads(dumps(document)) == document


def test_tables_nest_under_dotted_headers_and_paths_are_strings() -> None:
    text = dumps(
        {"state_dir": Path("/var/lib/a b"), "mqtt": {"url": "mqtts://h", "tls": {"ca": "c"}}},
        header=["written by a test"],
    )
    assert text.splitlines()[0] == "# written by a test"
    assert "[mqtt.tls]" in text
    assert tomllib.loads(text) == {
        "state_dir": "/var/lib/a b",
        "mqtt": {"url": "mqtts://h", "tls": {"ca": "c"}},
    }


@pytest.mark.parametrize("bad", [math.nan, math.inf, b"bytes", object(), {1: "int key"}])
def test_what_toml_cannot_hold_is_refused(bad: Any) -> None:
    with pytest.raises(ConfigError, match="TOML"):
        dumps({"key": bad})

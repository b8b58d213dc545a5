"""The transition-table type every lifecycle uses: a read-only mapping that refuses what it
does not list, and answers where an event leaves from and leads to."""

from __future__ import annotations

import enum

import pytest

from shared.transitions import TransitionTable


class Light(str, enum.Enum):
    RED = "red"
    GREEN = "green"
    AMBER = "amber"


class Signal(str, enum.Enum):
    GO = "go"
    WARN = "warn"
    STOP = "stop"


class LightRefusedError(RuntimeError):
    pass


TABLE = TransitionTable(
    "a light",
    {
        (Light.RED, Signal.GO): Light.GREEN,
        (Light.GREEN, Signal.WARN): Light.AMBER,
        (Light.AMBER, Signal.STOP): Light.RED,
        (Light.GREEN, Signal.STOP): Light.RED,
    },
    LightRefusedError,
)


def test_the_table_is_its_drawing_as_a_read_only_mapping() -> None:
    assert len(TABLE) == 4 and (Light.RED, Signal.GO) in TABLE
    assert (Light.RED, Signal.WARN) not in TABLE
    assert TABLE[(Light.GREEN, Signal.WARN)] is Light.AMBER
    assert dict(TABLE) == dict(TABLE.items())
    with pytest.raises(TypeError):
        TABLE[(Light.RED, Signal.WARN)] = Light.AMBER  # type: ignore[index]


def test_next_follows_the_table_and_refuses_the_rest_naming_subject_state_and_event() -> None:
    assert TABLE.next(Light.RED, Signal.GO) is Light.GREEN
    with pytest.raises(LightRefusedError, match="'warn' not allowed for a light in state 'red'"):
        TABLE.next(Light.RED, Signal.WARN)


def test_sources_are_sorted_and_the_target_must_be_one() -> None:
    assert TABLE.sources(Signal.STOP) == [Light.AMBER, Light.GREEN]
    assert TABLE.sources(Signal.GO) == [Light.RED]
    assert TABLE.target(Signal.STOP) is Light.RED
    several = TransitionTable("a light", {**TABLE, (Light.RED, Signal.STOP): Light.AMBER})
    with pytest.raises(ValueError, match="'stop' leads a light to 2 states"):
        several.target(Signal.STOP)

"""The wire codec validates with checkers compiled once per annotation: same conversions and
error messages as the annotations say, and no ``typing`` introspection per decoded message."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import pytest

from shared import _codec
from shared.canonical import parse_json
from shared.errors import MalformedMessageError, NonFiniteNumberError
from shared.messages import Event, Telemetry, decode_message


@dataclass(frozen=True)
class Inner:
    name: str
    weight: float = 1.0


@dataclass(frozen=True)
class Outer:
    count: int
    flags: tuple[bool, ...]
    tags: list[str]
    inner: Inner
    by_name: dict[str, Inner] = field(default_factory=dict)
    maybe: int | str | None = None
    anything: Any = None
    extra: dict[str, Any] = field(default_factory=dict)


def test_values_are_converted_as_annotated() -> None:
    data = {
        "count": 3,
        "flags": [True, False],
        "tags": ["a"],
        "inner": {"name": "x", "weight": 2},
        "by_name": {"k": {"name": "y"}},
        "maybe": "s",
        "anything": [1, {"z": None}],
        "unknown": 7,
    }
    out = _codec.from_plain(Outer, data, "outer")
    assert out == Outer(
        count=3,
        flags=(True, False),
        tags=["a"],
        inner=Inner("x", 2.0),
        by_name={"k": Inner("y")},
        maybe="s",
        anything=[1, {"z": None}],
        extra={"unknown": 7},
    )
    assert isinstance(out.inner.weight, float) and isinstance(out.flags, tuple)


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        ({"count": True}, "outer.count: expected an integer"),
        ({"count": None}, "outer.count: expected an integer"),
        ({"flags": [True, 1]}, "outer.flags[1]: expected a boolean"),
        ({"tags": "ab"}, "outer.tags: expected a list, got str"),
        ({"inner": []}, "outer.inner: expected an object"),
        ({"inner": {"weight": 1.0}}, "outer.inner: missing required field 'name'"),
        ({"inner": {"name": "x", "weight": "1"}}, "outer.inner.weight: expected a number"),
        ({"by_name": {"k": {"name": 5}}}, "outer.by_name.k.name: expected a string"),
        ({"by_name": [1]}, "outer.by_name: expected an object, got list"),
        (
            {"maybe": 1.5},
            "outer.maybe: expected an integer; outer.maybe: expected a string",
        ),
    ],
)
def test_errors_name_the_path_and_the_expected_type(patch: dict[str, Any], message: str) -> None:
    data = {"count": 1, "flags": [], "tags": [], "inner": {"name": "x"}} | patch
    with pytest.raises(MalformedMessageError) as exc:
        _codec.from_plain(Outer, data, "outer")
    assert str(exc.value) == message


def test_missing_required_field_and_nullability() -> None:
    with pytest.raises(MalformedMessageError, match="missing required field 'count'"):
        _codec.from_plain(Outer, {"flags": [], "tags": [], "inner": {"name": "x"}}, "outer")
    assert _codec.check_value(None, int | None, "w") is None
    with pytest.raises(MalformedMessageError, match=r"^w: must not be null$"):
        _codec.check_value(None, int | str, "w")


def test_unsupported_annotation_is_a_programming_error_when_used() -> None:
    checker = _codec._checker(set[int])  # compiling never fails...
    with pytest.raises(TypeError, match="unsupported annotation"):
        checker({1}, "w")  # ...using it does


def test_decoding_does_no_typing_introspection_after_the_first_message(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def first() -> list[bytes]:
        return [
            Telemetry(device_id="d1", seq=1, metrics={"a": 1.0}, ts=time.time()).encode(),
            Event(device_id="d1", event_id="e1", kind="k").encode(),
        ]

    for payload in first():  # warm: the plans of both classes are compiled
        decode_message(payload)

    telemetry = Telemetry(device_id="d2", seq=7, metrics={"b": 2, "c": 0.5}, ts=1.0)
    payload = telemetry.encode()

    def forbidden(*_a: object, **_k: object) -> Any:
        raise AssertionError("typing introspection on the per-message path")

    for name in ("get_origin", "get_args"):
        monkeypatch.setattr(_codec, name, forbidden)
    monkeypatch.setattr(_codec.typing, "get_type_hints", forbidden)
    monkeypatch.setattr(_codec.dataclasses, "fields", forbidden)
    decoded = decode_message(payload)
    assert decoded == telemetry and isinstance(decoded, Telemetry)
    assert decoded.metrics == {"b": 2.0, "c": 0.5}
    with pytest.raises(MalformedMessageError, match=r"telemetry\.metrics\.b: expected a number"):
        decode_message(payload.replace(b'"b":2', b'"b":"2"'))


def test_one_shared_json_decoder_still_refuses_non_finite_numbers() -> None:
    assert parse_json(b'{"a": 1.5, "b": [2]}', max_bytes=100) == {"a": 1.5, "b": [2]}
    for bad in (b'{"a": NaN}', b'{"a": 1e999}', b'{"a": -Infinity}'):
        with pytest.raises(NonFiniteNumberError):
            parse_json(bad, max_bytes=100)
    with pytest.raises(MalformedMessageError):
        parse_json(b'{"a": 1', max_bytes=100)

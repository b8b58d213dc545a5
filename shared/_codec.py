"""Validation of plain JSON values against dataclass field annotations.

Supports the types wire messages use: str, int, float, bool, None unions, list[X],
tuple[X, ...], dict[str, X], ``Any`` and nested frozen dataclasses with ``from_dict``.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from typing import Any, Union, get_args, get_origin

from shared.errors import MalformedMessageError

_NoneType = type(None)


def check_value(value: Any, tp: Any, where: str) -> Any:
    """Return ``value`` converted to ``tp`` or raise ``MalformedMessageError``."""
    if tp is Any:
        return value
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None:
            if _NoneType in args:
                return None
            raise MalformedMessageError(f"{where}: must not be null")
        errors = []
        for arg in args:
            if arg is _NoneType:
                continue
            try:
                return check_value(value, arg, where)
            except MalformedMessageError as exc:
                errors.append(str(exc))
        raise MalformedMessageError("; ".join(errors))
    if origin is list or origin is tuple:
        if not isinstance(value, list | tuple):
            raise MalformedMessageError(f"{where}: expected a list, got {type(value).__name__}")
        (item_tp, *_rest) = get_args(tp) or (Any,)
        items = [check_value(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise MalformedMessageError(f"{where}: expected an object, got {type(value).__name__}")
        _key_tp, val_tp = get_args(tp) or (str, Any)
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise MalformedMessageError(f"{where}: keys must be strings")
            out[k] = check_value(v, val_tp, f"{where}.{k}")
        return out
    if tp is bool:
        if not isinstance(value, bool):
            raise MalformedMessageError(f"{where}: expected a boolean")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise MalformedMessageError(f"{where}: expected an integer")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise MalformedMessageError(f"{where}: expected a number")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise MalformedMessageError(f"{where}: expected a string")
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise MalformedMessageError(f"{where}: expected an object")
        return from_plain(tp, value, where)
    raise TypeError(f"unsupported annotation {tp!r} at {where}")  # a programming error


@functools.cache
def _type_hints(cls: Any) -> dict[str, Any]:
    # resolving string annotations is ~1 ms per class: once per class, not per message
    return typing.get_type_hints(cls)


def from_plain(cls: Any, data: dict[str, Any], where: str) -> Any:
    """Build dataclass ``cls`` from a JSON object; unknown keys go to ``extra`` if present."""
    hints = _type_hints(cls)
    kwargs: dict[str, Any] = {}
    names = {f.name for f in dataclasses.fields(cls)}
    for f in dataclasses.fields(cls):
        if f.name == "extra":
            continue
        if f.name in data:
            kwargs[f.name] = check_value(data[f.name], hints[f.name], f"{where}.{f.name}")
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise MalformedMessageError(f"{where}: missing required field {f.name!r}")
    if "extra" in names:
        kwargs["extra"] = {
            k: v for k, v in data.items() if k not in names and k not in ("type", "v")
        }
    return cls(**kwargs)


def to_plain(value: Any) -> Any:
    """Convert dataclasses/tuples into JSON-ready values (``extra`` is merged back)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out: dict[str, Any] = {}
        extra: dict[str, Any] = {}
        for f in dataclasses.fields(value):
            v = getattr(value, f.name)
            if f.name == "extra":
                extra = dict(v)
                continue
            out[f.name] = to_plain(v)
        for k, v in extra.items():
            out.setdefault(k, v)
        return out
    if isinstance(value, list | tuple):
        return [to_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: to_plain(v) for k, v in value.items()}
    return value

"""Validation of plain JSON values against dataclass field annotations.

Supports the types wire messages use: str, int, float, bool, None unions, list[X],
tuple[X, ...], dict[str, X], ``Any`` and nested frozen dataclasses with ``from_dict``.

Each annotation is compiled once into a checker function and each dataclass into a list of
its fields' checkers (both cached), so decoding a message costs no ``typing`` introspection.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from collections.abc import Callable
from typing import Any, Union, get_args, get_origin

from shared.errors import MalformedMessageError

_NoneType = type(None)

Checker = Callable[[Any, str], Any]  # (value, where) -> the converted value


def check_value(value: Any, tp: Any, where: str) -> Any:
    """Return ``value`` converted to ``tp`` or raise ``MalformedMessageError``."""
    return _checker(tp)(value, where)


def _any(value: Any, where: str) -> Any:
    return value


def _bool(value: Any, where: str) -> Any:
    if not isinstance(value, bool):
        raise MalformedMessageError(f"{where}: expected a boolean")
    return value


def _int(value: Any, where: str) -> Any:
    if isinstance(value, bool) or not isinstance(value, int):
        raise MalformedMessageError(f"{where}: expected an integer")
    return value


def _float(value: Any, where: str) -> Any:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise MalformedMessageError(f"{where}: expected a number")
    return float(value)


def _str(value: Any, where: str) -> Any:
    if not isinstance(value, str):
        raise MalformedMessageError(f"{where}: expected a string")
    return value


_LEAVES: dict[Any, Checker] = {Any: _any, bool: _bool, int: _int, float: _float, str: _str}


@functools.cache
def _checker(tp: Any) -> Checker:
    """The checker of annotation ``tp`` (compiled once per annotation)."""
    leaf = _LEAVES.get(tp)
    if leaf is not None:
        return leaf
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        return _union_checker(get_args(tp))
    if origin is list or origin is tuple:
        return _sequence_checker(origin, get_args(tp))
    if origin is dict:
        return _dict_checker(get_args(tp))
    if dataclasses.is_dataclass(tp):
        return _dataclass_checker(tp)
    return _unsupported_checker(tp)


def _union_checker(args: tuple[Any, ...]) -> Checker:
    nullable = _NoneType in args
    arms = [_checker(arg) for arg in args if arg is not _NoneType]

    def check(value: Any, where: str) -> Any:
        if value is None:
            if nullable:
                return None
            raise MalformedMessageError(f"{where}: must not be null")
        errors = []
        for arm in arms:
            try:
                return arm(value, where)
            except MalformedMessageError as exc:
                errors.append(str(exc))
        raise MalformedMessageError("; ".join(errors))

    return check


def _sequence_checker(origin: Any, args: tuple[Any, ...]) -> Checker:
    (item_tp, *_rest) = args or (Any,)
    item = _checker(item_tp)
    as_tuple = origin is tuple

    def check(value: Any, where: str) -> Any:
        if not isinstance(value, list | tuple):
            raise MalformedMessageError(f"{where}: expected a list, got {type(value).__name__}")
        items = [item(v, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if as_tuple else items

    return check


def _dict_checker(args: tuple[Any, ...]) -> Checker:
    _key_tp, val_tp = args or (str, Any)
    item = _checker(val_tp)

    def check(value: Any, where: str) -> Any:
        if not isinstance(value, dict):
            raise MalformedMessageError(f"{where}: expected an object, got {type(value).__name__}")
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise MalformedMessageError(f"{where}: keys must be strings")
            out[k] = item(v, f"{where}.{k}")
        return out

    return check


def _dataclass_checker(tp: Any) -> Checker:
    def check(value: Any, where: str) -> Any:
        if not isinstance(value, dict):
            raise MalformedMessageError(f"{where}: expected an object")
        return from_plain(tp, value, where)

    return check


def _unsupported_checker(tp: Any) -> Checker:
    def check(value: Any, where: str) -> Any:
        raise TypeError(f"unsupported annotation {tp!r} at {where}")  # a programming error

    return check


@dataclasses.dataclass(frozen=True)
class _Plan:
    """How :func:`from_plain` builds one dataclass: its fields in order, with checkers."""

    fields: tuple[tuple[str, Checker, bool], ...]  # name, checker, required
    names: frozenset[str]
    has_extra: bool


@functools.cache
def _plan(cls: Any) -> _Plan:
    # resolving string annotations is ~1 ms per class: once per class, not per message
    hints = typing.get_type_hints(cls)
    fields = tuple(
        (
            f.name,
            _checker(hints[f.name]),
            f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING,
        )
        for f in dataclasses.fields(cls)
        if f.name != "extra"
    )
    names = frozenset(f.name for f in dataclasses.fields(cls))
    return _Plan(fields=fields, names=names, has_extra="extra" in names)


def from_plain(cls: Any, data: dict[str, Any], where: str) -> Any:
    """Build dataclass ``cls`` from a JSON object; unknown keys go to ``extra`` if present."""
    plan = _plan(cls)
    kwargs: dict[str, Any] = {}
    for name, check, required in plan.fields:
        if name in data:
            kwargs[name] = check(data[name], f"{where}.{name}")
        elif required:
            raise MalformedMessageError(f"{where}: missing required field {name!r}")
    if plan.has_extra:
        names = plan.names
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

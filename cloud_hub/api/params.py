"""Shared request-parameter constraints (every input is bounded and free of control bytes)."""

from __future__ import annotations

from types import UnionType
from typing import Any, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, ValidationInfo, field_validator

__all__ = [
    "ID_PATTERN",
    "LABEL_FILTER_PATTERN",
    "MAX_OFFSET",
    "TEXT_PATTERN",
    "StrictBody",
    "parse_label_filters",
]

ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
TEXT_PATTERN = r"^[^\x00-\x1f\x7f]*$"
LABEL_FILTER_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,62}=[^\x00-\x1f\x7f=]{0,128}$"
MAX_OFFSET = 10_000_000


class StrictBody(BaseModel):
    """A request body taken as its JSON types say: a boolean is not an integer and "1" is
    not 1 (pydantic's lax mode would convert both). As in JSON Schema, 1 is a number and
    1.0 an integer."""

    model_config = ConfigDict(strict=True)

    @field_validator("*", mode="before")
    @classmethod
    def _integral_floats(cls, value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, float) and value.is_integer() and info.field_name is not None:
            field = cls.model_fields.get(info.field_name)
            if field is not None and _takes_int(field.annotation):
                return int(value)
        return value


def _takes_int(annotation: Any) -> bool:
    if annotation is int:
        return True
    return get_origin(annotation) in (Union, UnionType) and int in get_args(annotation)


def parse_label_filters(items: list[str]) -> dict[str, str]:
    """``["site=plant-3"]`` → ``{"site": "plant-3"}`` (already pattern-checked)."""
    return dict(item.split("=", 1) for item in items)  # type: ignore[misc]

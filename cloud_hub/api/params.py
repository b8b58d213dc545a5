"""Shared request-parameter constraints (every input is bounded and free of control bytes)."""

from __future__ import annotations

__all__ = [
    "ID_PATTERN",
    "LABEL_FILTER_PATTERN",
    "MAX_OFFSET",
    "TEXT_PATTERN",
    "parse_label_filters",
]

ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
TEXT_PATTERN = r"^[^\x00-\x1f\x7f]*$"
LABEL_FILTER_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,62}=[^\x00-\x1f\x7f=]{0,128}$"
MAX_OFFSET = 10_000_000


def parse_label_filters(items: list[str]) -> dict[str, str]:
    """``["site=plant-3"]`` → ``{"site": "plant-3"}`` (already pattern-checked)."""
    return dict(item.split("=", 1) for item in items)  # type: ignore[misc]

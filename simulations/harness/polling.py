"""Waiting for a condition the fleet reaches on its own (agents install, the hub starts)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from cloud_hub.errors import HubError

__all__ = ["NotReachedError", "eventually"]


class NotReachedError(HubError):
    """A condition was not reached in time."""


def eventually(
    check: Callable[[], Any],
    timeout: float,
    what: str,
    diag: Callable[[], str] | None = None,
    *,
    interval: float = 0.25,
) -> Any:
    """Poll ``check`` until it returns something true, and return that.

    After ``timeout`` seconds: :class:`NotReachedError` naming ``what``, followed by
    ``diag()`` (logs that explain why) when given."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            detail = f"\n{diag()}" if diag is not None else ""
            raise NotReachedError(f"{what} not reached within {timeout:.0f} s{detail}")
        time.sleep(interval)

"""Staleness of an asynchronous update and its FedBuff weight (pure; hub and device).

An update trained from global version ``base`` and folded while the hub is at version
``current`` has staleness ``tau = current - base``. FedBuff (Nguyen et al., 2022) scales it
by ``1 / sqrt(1 + tau)``. Both sides compute the weight from the same function: the hub to
choose a buffer, the device to refuse an exchange whose announced version would make its
update too stale (or from the future). Because a device refuses ``tau > max_staleness``,
its weight is never below ``1 / sqrt(1 + max_staleness)``: a hub cannot zero out the other
members of a buffer to read one device's update through the secure sum.
"""

from __future__ import annotations

import math

from shared.errors import ConfigError

__all__ = ["MAX_STALENESS_LIMIT", "StalenessError", "staleness", "staleness_weight"]

#: no configuration may accept updates older than this many versions
MAX_STALENESS_LIMIT = 1_000


class StalenessError(ConfigError):
    """An update is too stale (or claims a base version newer than the current one)."""


def staleness(current_version: int, base_version: int, max_staleness: int) -> int:
    """``current - base``, refused when negative or above ``max_staleness``."""
    if not 0 <= max_staleness <= MAX_STALENESS_LIMIT:
        raise ConfigError(
            f"max_staleness must be in [0, {MAX_STALENESS_LIMIT}], got {max_staleness}"
        )
    tau = current_version - base_version
    if tau < 0:
        raise StalenessError(
            f"update base version {base_version} is newer than the current version {current_version}"
        )
    if tau > max_staleness:
        raise StalenessError(
            f"update from version {base_version} is {tau} versions stale "
            f"(current {current_version}, max_staleness {max_staleness}); refused"
        )
    return tau


def staleness_weight(current_version: int, base_version: int, max_staleness: int) -> float:
    """FedBuff's ``1 / sqrt(1 + tau)`` for an update that passes :func:`staleness`."""
    return 1.0 / math.sqrt(1.0 + staleness(current_version, base_version, max_staleness))

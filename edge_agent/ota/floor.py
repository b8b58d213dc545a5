"""The anti-rollback floor and the one-time rollback orders (R5), kept in their own record.

A device runs one model for its class. :class:`AntiRollbackFloor` holds that model's name and
the highest version this device ever committed of it (the *high-water mark*): an offer must
be newer, and a signed rollback order lets the device go back *without* lowering the mark, so
the bundle that was rolled back cannot be offered again (a fixed model ships as a higher
version). Another model name, or an older version, needs a signed order; each order works
once: its id is remembered until it expires.

The record lives in ``state_dir/anti_rollback.json`` (atomic writes), apart from the
deployment record, so that losing one does not reset the other. The pure part
(:class:`AntiRollbackFloor`) takes values and returns values; :class:`FloorStore` is the file.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from edge_agent.ota.persist import atomic_write_json
from shared.errors import ReplayError

__all__ = ["MAX_USED_ORDERS", "AntiRollbackFloor", "FloorStore"]

log = logging.getLogger(__name__)

#: Used order ids remembered at once. Only the hub's signing key makes orders bound to this
#: device, a handful per rollout; past the bound the soonest-expiring id is forgotten.
MAX_USED_ORDERS = 4096


@dataclass(frozen=True)
class AntiRollbackFloor:
    """``model_name``/``version``: the class's model and its high-water mark (``None``/0
    before the first install); ``used_orders``: order id -> expiry (epoch seconds)."""

    model_name: str | None = None
    version: int = 0
    used_orders: Mapping[str, float] = field(default_factory=dict)

    def offer_floor(self) -> dict[str, int]:
        """What an offer is checked against (``VerifyPolicy.installed_versions``)."""
        return {} if self.model_name is None else {self.model_name: self.version}

    def committed(self, model_name: str, version: int) -> AntiRollbackFloor:
        """A deployment committed ``model_name`` ``version``: raise the mark (a new model,
        admitted by a signed order, starts its own)."""
        if model_name != self.model_name:
            return replace(self, model_name=model_name, version=version)
        return replace(self, version=max(self.version, version))

    def rolled_back_to(self, model_name: str, version: int) -> AntiRollbackFloor:
        """A signed order made ``model_name`` ``version`` active: the mark stays where it is
        (R5: a rollback never re-opens the versions it left)."""
        if model_name != self.model_name:
            return replace(self, model_name=model_name, version=version)
        return self

    def check_unused(self, order_id: str, *, now: float) -> None:
        """``ReplayError`` if this order was already used and has not expired."""
        expires = self.used_orders.get(order_id)
        if expires is not None and expires > now:
            raise ReplayError(f"rollback order {order_id[:16]!r} was already used")

    def use(self, order_id: str, *, expires: float, now: float) -> AntiRollbackFloor:
        """Remember ``order_id`` until ``expires``; forget expired ids."""
        used = {k: v for k, v in self.used_orders.items() if v > now}
        used[order_id] = expires
        while len(used) > MAX_USED_ORDERS:
            del used[min(used, key=lambda k: used[k])]
        return replace(self, used_orders=used)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model_name": self.model_name,
            "version": self.version,
            "used_orders": dict(self.used_orders),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AntiRollbackFloor:
        model = data.get("model_name")
        version = data.get("version", 0)
        used = data.get("used_orders", {})
        if model is not None and not isinstance(model, str):
            raise ValueError("model_name must be a string")
        if not isinstance(version, int) or isinstance(version, bool) or version < 0:
            raise ValueError("version must be a non-negative integer")
        if not isinstance(used, dict):
            raise ValueError("used_orders must be an object")
        return cls(
            model_name=model,
            version=version,
            used_orders={str(k): float(v) for k, v in used.items()},
        )


class FloorStore:
    """``state_dir/anti_rollback.json``; every ``save`` is atomic."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / "anti_rollback.json"
        state_dir.mkdir(parents=True, exist_ok=True)

    def load(self, *, fallback: AntiRollbackFloor) -> AntiRollbackFloor:
        """The stored floor; ``fallback`` (derived by the caller from what is installed) when
        there is none yet or it is unreadable (then kept as ``.corrupt`` and logged)."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return fallback
        try:
            data = json.loads(raw)
            if not isinstance(data, dict):
                raise ValueError("not an object")
            return AntiRollbackFloor.from_dict(data)
        except (ValueError, TypeError) as exc:
            broken = self.path.with_name("anti_rollback.json.corrupt")
            os.replace(self.path, broken)
            log.error("anti-rollback record unreadable (%s); moved to %s", exc, broken)
            return fallback

    def save(self, floor: AntiRollbackFloor) -> None:
        atomic_write_json(self.path, floor.to_dict())

"""The update a device trained and holds until a secure buffer folds it (numpy only).

An asynchronous device trains when it is ordered to and keeps its update
``delta = local - base`` until the hub gathers enough ready devices for a SecAgg+ buffer.
That can be hours later, across reboots and agent restarts, so the update lives in one
file written atomically (:func:`shared.files.atomic_write`): a crash leaves the old update
or the new one, never half of each. The file is 0600: it is the device's private update.
"""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from shared.errors import ConfigError, MalformedMessageError
from shared.files import atomic_write

__all__ = ["MAX_EXCHANGES", "HeldUpdate", "HeldUpdateSpentError", "HeldUpdateStore"]

#: A held update is masked into at most this many SecAgg+ exchanges. A device cannot tell
#: whether an exchange it answered was completed (the hub can unmask with the other members'
#: shares alone), so a hub that re-used updates across many buffers could difference their
#: sums; two tries let a buffer that fell below threshold be retried once.
MAX_EXCHANGES = 2

_SCHEMA = 1
_FILE = "held-update.npz"
_MAX_ARRAYS = 4_096


@dataclass(frozen=True)
class HeldUpdate:
    """One trained, not yet aggregated update and the order it answers."""

    run_name: str
    order_id: str
    base_version: int
    num_examples: int
    delta: tuple[NDArray, ...]
    exchanges: int = 0  # SecAgg+ exchanges this update was already masked into

    def to_npz_bytes(self) -> bytes:
        meta = {
            "type": "held_update",
            "schema": _SCHEMA,
            "run_name": self.run_name,
            "order_id": self.order_id,
            "base_version": self.base_version,
            "num_examples": self.num_examples,
            "exchanges": self.exchanges,
        }
        buffer = io.BytesIO()
        arrays = {f"a{i}": np.asarray(a) for i, a in enumerate(self.delta)}
        np.savez(buffer, meta=np.array(json.dumps(meta)), **arrays)  # type: ignore[arg-type]
        return buffer.getvalue()

    @classmethod
    def from_npz_bytes(cls, data: bytes) -> HeldUpdate:
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as npz:
                meta = json.loads(str(npz["meta"]))
                count = len(npz.files) - 1
                if not 0 <= count <= _MAX_ARRAYS:
                    raise MalformedMessageError(f"held update has {count} arrays")
                delta = tuple(np.array(npz[f"a{i}"]) for i in range(count))
        except (OSError, ValueError, KeyError, zipfile.BadZipFile, json.JSONDecodeError) as exc:
            raise MalformedMessageError(f"held update is unreadable: {exc}") from exc
        if meta.get("type") != "held_update" or meta.get("schema") != _SCHEMA:
            raise MalformedMessageError(f"not a held update of schema {_SCHEMA}: {meta!r}")
        try:
            return cls(
                run_name=str(meta["run_name"]),
                order_id=str(meta["order_id"]),
                base_version=int(meta["base_version"]),
                num_examples=int(meta["num_examples"]),
                delta=delta,
                exchanges=int(meta.get("exchanges", 0)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise MalformedMessageError(f"held update metadata is incomplete: {exc}") from exc


class HeldUpdateSpentError(ConfigError):
    """The held update was already masked into :data:`MAX_EXCHANGES` exchanges."""


class HeldUpdateStore:
    """At most one held update per device, in ``directory``."""

    def __init__(self, directory: Path) -> None:
        self._dir = directory

    @property
    def path(self) -> Path:
        return self._dir / _FILE

    def save(self, update: HeldUpdate) -> None:
        try:
            self._dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise ConfigError(
                f"cannot create the held-update directory {self._dir}: {exc}"
            ) from exc
        atomic_write(self.path, update.to_npz_bytes(), mode=0o600)

    def load(self) -> HeldUpdate | None:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return None
        return HeldUpdate.from_npz_bytes(data)

    def spend(self) -> HeldUpdate:
        """The held update for one more exchange, counted on disk before it is masked."""
        held = self.load()
        if held is None:
            raise ConfigError("no held update")
        if held.exchanges >= MAX_EXCHANGES:
            raise HeldUpdateSpentError(
                f"held update {held.order_id} was already masked into {held.exchanges} "
                "exchanges; refused (train a fresh one)"
            )
        spent = replace(held, exchanges=held.exchanges + 1)
        self.save(spent)
        return spent

    def release(self, order_id: str) -> bool:
        """Delete the held update if it answers ``order_id``; True when one was deleted."""
        held = self.load()
        if held is None or held.order_id != order_id:
            return False
        self.path.unlink(missing_ok=True)
        return True

"""The update a device trained and holds until a secure buffer folds it (numpy only).

An asynchronous device trains when it is ordered to and keeps its update
``delta = local - base`` until the hub gathers enough ready devices for a SecAgg+ buffer.
That can be hours later, across reboots and agent restarts, so the update lives in one
file written atomically (:func:`shared.files.atomic_write`): a crash leaves the old update
or the new one, never half of each. The file is 0600: it is the device's private update.

**One-time masking.** A held update leaves the device in at most one masked vector, ever.
:meth:`HeldUpdateStore.spend` hands the update out for SecAgg+'s "collect masked vectors"
stage and, *before* it returns (so before the vector is masked and sent), replaces the file
with a spent record that keeps the order id and base version but no values. A second
exchange asking for it is refused (:class:`HeldUpdateSpentError`).

Why once and not "until a buffer completes": a device cannot tell whether an exchange it
answered was completed. The hub can unmask the sum with the other members' shares alone,
then claim the buffer failed and ask again. If the same update ``u`` were masked into two
exchanges whose member sets differ (``{u, a, b}`` and ``{u, a, c}``), the two sums differ by
``b - c``; with enough overlapping exchanges a hub solves for single updates, which is what
secure aggregation exists to prevent. With one masked vector per update, every update is
in at most one sum the hub can open, and sums over disjoint update sets reveal nothing
about one member beyond the sum itself.

What may re-enter a later exchange is an update that never reached the collect stage: the
setup and key-sharing stages use fresh per-exchange keys and nothing derived from the
update, so an exchange that broke there disclosed nothing about it. A crash between the
spent record and the send loses the update (conservative: it is trained again), never
discloses it twice.
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

__all__ = ["HeldUpdate", "HeldUpdateSpentError", "HeldUpdateStore", "NothingHeldError"]

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
    spent: bool = False  # its masked vector was handed out once: never again (no values kept)

    def refuse_if_spent(self) -> None:
        """Raise :class:`HeldUpdateSpentError` when the masked vector already went out."""
        if self.spent:
            raise HeldUpdateSpentError(
                f"held update of order {self.order_id} already went out in a masked vector "
                "of an earlier secure exchange; it is spent and never masked again "
                "(a fresh order trains a new one)"
            )

    def to_npz_bytes(self) -> bytes:
        meta = {
            "type": "held_update",
            "schema": _SCHEMA,
            "run_name": self.run_name,
            "order_id": self.order_id,
            "base_version": self.base_version,
            "num_examples": self.num_examples,
            "spent": self.spent,
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
                # files of older agents count exchanges: any exchange at all means spent
                spent=bool(meta.get("spent", False)) or int(meta.get("exchanges", 0)) > 0,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise MalformedMessageError(f"held update metadata is incomplete: {exc}") from exc


class NothingHeldError(ConfigError):
    """A buffer exchange reached a device that holds no update."""


class HeldUpdateSpentError(ConfigError):
    """The held update already went out in a masked vector: it is never masked again."""


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
        """The held update, for the one masked vector it may ever go into.

        The file is replaced by a spent record (no values) before this returns, so before
        anything derived from the update leaves the device. Raises
        :class:`HeldUpdateSpentError` when that already happened.
        """
        held = self.load()
        if held is None:
            raise NothingHeldError("this device holds no update for a buffer")
        held.refuse_if_spent()
        self.save(replace(held, spent=True, delta=()))
        return held

    def release(self, order_id: str) -> bool:
        """Delete the held update if it answers ``order_id``; True when one was deleted."""
        held = self.load()
        if held is None or held.order_id != order_id:
            return False
        self.path.unlink(missing_ok=True)
        return True

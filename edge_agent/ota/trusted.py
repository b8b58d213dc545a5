"""The device's trusted state (R10): keyring floor, newest keyring, newest freshness document.

Kept apart from the deployment record (``ota_state.json``) so that losing or corrupting that
file cannot lower the keyring floor: a device that once accepted keyring v2 (which revoked a
leaked key) must never again accept v1, whatever happens to its other files.

The record is written to two files, one after the other, each atomically
(``trust/record-a.json``, ``trust/record-b.json``). Loading takes the newest readable copy and
rewrites the other, so a single corrupt or deleted file loses nothing. Only if both are
unreadable does the device fall back to the floor left in a pre-R10 ``ota_state.json`` (or 0);
it says so in the log and :attr:`TrustedStore.lost` lets the agent report it.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from edge_agent.ota.persist import atomic_write_json
from shared.signing import Keyring

__all__ = ["TrustedRecord", "TrustedStore"]

log = logging.getLogger(__name__)
_COPIES = ("record-a.json", "record-b.json")


@dataclass(frozen=True)
class TrustedRecord:
    """``keyring_version``: the newest keyring ever accepted (older ones are refused);
    ``freshness_version``: the same for freshness documents. The envelopes are the verified
    documents themselves (kept so a restart knows what was verified and until when)."""

    keyring_version: int = 0
    keyring: dict[str, Any] | None = None
    freshness_version: int = 0
    freshness: dict[str, Any] | None = None

    @property
    def order(self) -> tuple[int, int]:
        return (self.keyring_version, self.freshness_version)

    def to_dict(self) -> dict[str, Any]:
        return {
            "keyring_version": self.keyring_version,
            "keyring": self.keyring,
            "freshness_version": self.freshness_version,
            "freshness": self.freshness,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrustedRecord:
        return cls(
            keyring_version=_version(data, "keyring_version"),
            keyring=_envelope(data, "keyring"),
            freshness_version=_version(data, "freshness_version"),
            freshness=_envelope(data, "freshness"),
        )


def _version(data: Mapping[str, Any], name: str) -> int:
    value = data.get(name)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer")
    return value


def _envelope(data: Mapping[str, Any], name: str) -> dict[str, Any] | None:
    value = data.get(name)
    if value is not None and not isinstance(value, dict):
        raise ValueError(f"{name} must be an object or null")
    return value


def _legacy_floor(state_dir: Path) -> int:
    """The keyring floor a pre-R10 agent kept inside ``ota_state.json`` (0 if none)."""
    try:
        value = json.loads((state_dir / "ota_state.json").read_bytes()).get("keyring_version", 0)
    except (OSError, ValueError, AttributeError):
        return 0
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


class TrustedStore:
    """``state_dir/trust/``: the :class:`TrustedRecord`, in two copies."""

    def __init__(self, state_dir: Path) -> None:
        self.directory = state_dir / "trust"
        self.directory.mkdir(parents=True, exist_ok=True)
        self.lost = False  # both copies were unreadable at load
        self.record = self._load(state_dir)

    @property
    def keyring_floor(self) -> int:
        return self.record.keyring_version

    def accept_keyring(self, keyring: Keyring, envelope: Mapping[str, Any]) -> bool:
        """Raise the floor to a keyring verified by the caller; ``True`` if it was newer."""
        if keyring.version < self.record.keyring_version:
            return False  # the caller verified against the floor; never lower it regardless
        if keyring.version == self.record.keyring_version and self.record.keyring is not None:
            return False
        newer = keyring.version > self.record.keyring_version
        self._save(replace(self.record, keyring_version=keyring.version, keyring=dict(envelope)))
        return newer

    def accept_freshness(self, version: int, envelope: Mapping[str, Any]) -> None:
        """Keep a verified freshness document (the caller checked it against the floor)."""
        if version < self.record.freshness_version:
            return
        self._save(replace(self.record, freshness_version=version, freshness=dict(envelope)))

    # -- files -------------------------------------------------------------------------------
    def _read(self, name: str) -> TrustedRecord | None:
        path = self.directory / name
        try:
            data = json.loads(path.read_bytes())
            if not isinstance(data, dict):
                raise ValueError("not an object")
            return TrustedRecord.from_dict(data)
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            broken = path.with_name(f"{name}.corrupt")
            os.replace(path, broken)
            log.error("trusted-state copy %s unreadable (%s); moved to %s", path, exc, broken)
            return None

    def _load(self, state_dir: Path) -> TrustedRecord:
        copies = [self._read(name) for name in _COPIES]
        found = [c for c in copies if c is not None]
        legacy = _legacy_floor(state_dir)
        if found:
            record = max(found, key=lambda r: r.order)
        else:
            record = TrustedRecord()
            self.lost = any((self.directory / f"{n}.corrupt").exists() for n in _COPIES)
            if self.lost:
                log.error("trusted state lost: both copies unreadable; keyring floor %d", legacy)
        if legacy > record.keyring_version:  # migrate a pre-R10 floor
            record = replace(record, keyring_version=legacy, keyring=None)
        if any(c != record for c in copies):
            self._save(record)  # repair the missing/corrupt/older copy
        return record

    def _save(self, record: TrustedRecord) -> None:
        for name in _COPIES:  # one after the other: a crash leaves at least one whole copy
            atomic_write_json(self.directory / name, record.to_dict())
        self.record = record

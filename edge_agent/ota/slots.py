"""A/B model slots under ``state_dir/slots``: ``a/``, ``b/`` and the ``active`` pointer file.

A slot is written completely (files fsynced, ``slot.json`` last) in a staging directory and
renamed into place; only the inactive slot is ever written. The ``active`` pointer is
replaced atomically, so the active slot is always a complete, verified install.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_agent.errors import InstallError
from edge_agent.ota.persist import atomic_write_json
from shared.files import atomic_write, fsync_dir
from shared.messages import InstalledModel

__all__ = ["SLOT_NAMES", "InstalledSlot", "SlotMeta", "SlotStore"]

SLOT_NAMES = ("a", "b")


@dataclass(frozen=True)
class SlotMeta:
    """What a slot holds (``slot.json``)."""

    model_name: str
    version: int
    bundle_id: str
    deployment_id: str
    installed_at: float
    artifacts: list[dict[str, Any]] = field(default_factory=list)  # name, sha256, size, role

    def to_dict(self) -> dict[str, Any]:
        return {
            "model_name": self.model_name,
            "version": self.version,
            "bundle_id": self.bundle_id,
            "deployment_id": self.deployment_id,
            "installed_at": self.installed_at,
            "artifacts": list(self.artifacts),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SlotMeta:
        return cls(
            model_name=str(data["model_name"]),
            version=int(data["version"]),
            bundle_id=str(data["bundle_id"]),
            deployment_id=str(data.get("deployment_id", "")),
            installed_at=float(data.get("installed_at", 0.0)),
            artifacts=[dict(a) for a in data.get("artifacts", [])],
        )

    def installed_model(self) -> InstalledModel:
        return InstalledModel(
            model_name=self.model_name, version=self.version, bundle_id=self.bundle_id
        )


@dataclass(frozen=True)
class InstalledSlot:
    """A complete slot: where its files are and what they are."""

    name: str
    path: Path
    meta: SlotMeta

    def artifact_path(self, role: str) -> Path | None:
        for a in self.meta.artifacts:
            if a.get("role") == role:
                return self.path / str(a["name"])
        return None

    @property
    def model_path(self) -> Path | None:
        return self.artifact_path("model")

    @property
    def manifest_envelope(self) -> dict[str, Any]:
        data = json.loads((self.path / "manifest.json").read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else {}


class SlotStore:
    def __init__(self, state_dir: Path) -> None:
        self.root = state_dir / "slots"
        self.root.mkdir(parents=True, exist_ok=True)
        self.pointer = self.root / "active"
        for stale in self.root.glob(".*.staging"):  # an install killed mid-write
            shutil.rmtree(stale, ignore_errors=True)
        for stale in self.root.glob(".*.old"):
            shutil.rmtree(stale, ignore_errors=True)

    def path(self, name: str) -> Path:
        if name not in SLOT_NAMES:
            raise InstallError(f"unknown slot {name!r}")
        return self.root / name

    def active_name(self) -> str | None:
        try:
            name = self.pointer.read_text(encoding="ascii").strip()
        except (FileNotFoundError, UnicodeDecodeError):
            return None
        return name if name in SLOT_NAMES else None

    def inactive_name(self) -> str:
        return "b" if self.active_name() == "a" else "a"

    def read(self, name: str | None) -> InstalledSlot | None:
        """The slot if it is complete (has a readable ``slot.json``), else ``None``."""
        if name is None:
            return None
        path = self.path(name)
        try:
            meta = SlotMeta.from_dict(json.loads((path / "slot.json").read_text("utf-8")))
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return InstalledSlot(name=name, path=path, meta=meta)

    def active(self) -> InstalledSlot | None:
        return self.read(self.active_name())

    def write(
        self,
        name: str,
        artifacts: Mapping[str, bytes | memoryview],
        meta: SlotMeta,
        manifest_envelope: Mapping[str, Any],
    ) -> InstalledSlot:
        """Replace the (inactive) slot ``name`` with ``artifacts``, durably."""
        if name == self.active_name():
            raise InstallError(f"refusing to overwrite the active slot {name!r}")
        final = self.path(name)
        staging = self.root / f".{name}.staging"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        for fname, data in artifacts.items():
            _write_durable(staging / fname, data)
        _write_durable(staging / "manifest.json", json.dumps(dict(manifest_envelope)).encode())
        atomic_write_json(staging / "slot.json", meta.to_dict())
        old = self.root / f".{name}.old"
        if final.exists():
            os.replace(final, old)
        os.replace(staging, final)
        fsync_dir(self.root)
        shutil.rmtree(old, ignore_errors=True)
        return InstalledSlot(name=name, path=final, meta=meta)

    def switch(self, name: str | None) -> None:
        """Make ``name`` the active slot (``None``: no model) in one atomic step."""
        if name is None:
            if self.pointer.exists():
                self.pointer.unlink()
                fsync_dir(self.root)
            return
        self.path(name)
        atomic_write(self.pointer, name.encode("ascii"))

    def check(self, name: str) -> bool:
        """Whether every artifact of slot ``name`` matches its recorded sha256 and size."""
        slot = self.read(name)
        if slot is None:
            return False
        for a in slot.meta.artifacts:
            try:
                data = (slot.path / str(a["name"])).read_bytes()
            except OSError:
                return False
            if len(data) != a.get("size") or hashlib.sha256(data).hexdigest() != a.get("sha256"):
                return False
        return True


def _write_durable(path: Path, data: bytes | memoryview) -> None:
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())

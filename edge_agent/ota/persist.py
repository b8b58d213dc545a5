"""Crash-safe persistence of the OTA state: write temp + fsync + rename + fsync directory.

A reader therefore sees either the old or the new file, never a torn one, whatever moment
the process is killed (or the power fails).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from edge_agent.errors import InstallError
from edge_agent.ota.machine import Deployment
from shared.files import atomic_write

__all__ = ["OtaState", "StateStore", "atomic_write_json"]

log = logging.getLogger(__name__)
_RECENT = 64  # deployment ids remembered to make duplicate commands harmless


def atomic_write_json(path: Path, value: Any) -> None:
    atomic_write(path, json.dumps(value, sort_keys=True, indent=1).encode("utf-8"))


@dataclass(frozen=True)
class OtaState:
    """Everything the updater persists besides the slots themselves.

    The keyring floor is not here (R10): it lives in :mod:`edge_agent.ota.trusted`, so that a
    corrupt copy of this file cannot lower it. ``installed_versions``: the version per model
    that the active slot runs (an offer must be newer unless a signed rollback order says
    otherwise).
    """

    deployment: Deployment | None = None
    installed_versions: dict[str, int] = field(default_factory=dict)
    recent_deployments: tuple[str, ...] = ()

    def remember(self, deployment_id: str) -> OtaState:
        recent = tuple(d for d in self.recent_deployments if d != deployment_id)
        return replace(self, recent_deployments=(*recent, deployment_id)[-_RECENT:])

    def to_dict(self) -> dict[str, Any]:
        return {
            "deployment": None if self.deployment is None else self.deployment.to_dict(),
            "installed_versions": dict(self.installed_versions),
            "recent_deployments": list(self.recent_deployments),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> OtaState:
        dep = data.get("deployment")
        try:
            return cls(
                deployment=None if dep is None else Deployment.from_dict(dep),
                installed_versions={
                    str(k): int(v) for k, v in dict(data.get("installed_versions", {})).items()
                },
                recent_deployments=tuple(str(d) for d in data.get("recent_deployments", [])),
            )
        except (TypeError, ValueError) as exc:
            raise InstallError(f"persisted OTA state is invalid: {exc}") from exc


class StateStore:
    """``state_dir/ota_state.json``; every ``save`` is atomic."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / "ota_state.json"
        state_dir.mkdir(parents=True, exist_ok=True)

    def load(self) -> OtaState:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return OtaState()
        try:
            data = json.loads(raw)
            if not isinstance(data, dict):
                raise ValueError("not an object")
            return OtaState.from_dict(data)
        except (ValueError, InstallError) as exc:
            # Cannot happen through atomic writes; keep the evidence and start clean rather
            # than refusing to boot (the slots and their active pointer are untouched).
            broken = self.path.with_name("ota_state.json.corrupt")
            os.replace(self.path, broken)
            log.error("OTA state file unreadable (%s); moved to %s, starting idle", exc, broken)
            return OtaState()

    def save(self, state: OtaState) -> None:
        atomic_write_json(self.path, state.to_dict())

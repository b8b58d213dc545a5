"""The hub's on-disk store of trained model candidates, ready for the compression step.

Layout: ``<root>/<run_id>/model.pt`` (a torch ``state_dict`` of
``shared.models.build_model(model_name)``) and ``<root>/<run_id>/candidate.json`` (lineage
and metrics). A candidate directory appears atomically (written aside, then renamed), so a
reader never sees half a candidate. The compression step does::

    record = store.get(run_id)
    model = build_model(record.model_name)
    model.load_state_dict(store.load_state_dict(run_id))
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from numpy.typing import NDArray

from cloud_hub.errors import HubConfigError, RegistryError

__all__ = ["CandidateRecord", "ModelStore"]

_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_MAX_JSON_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True)
class CandidateRecord:
    """A trained model waiting for compression, with where it came from."""

    run_id: str
    model_name: str
    created_at: str
    lineage: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    schema_version: int = 1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CandidateRecord:
        if data.get("schema_version") != 1:
            raise RegistryError(f"unsupported candidate schema {data.get('schema_version')!r}")
        try:
            return cls(**data)
        except TypeError as exc:
            raise RegistryError(f"malformed candidate record: {exc}") from exc


class ModelStore:
    """A folder of candidates keyed by run id."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def _dir(self, run_id: str) -> Path:
        if not _RUN_ID.fullmatch(run_id):
            raise HubConfigError(f"invalid run id {run_id!r}")
        return self.root / run_id

    def check_available(self, run_id: str) -> None:
        """Refuse a run id that is invalid or already taken (call before training)."""
        if self._dir(run_id).exists():
            raise RegistryError(f"candidate {run_id!r} already exists")

    def save_candidate(
        self,
        *,
        run_id: str,
        model_name: str,
        weights: list[NDArray],
        lineage: dict[str, Any],
        metrics: dict[str, Any],
        created_at: str,
    ) -> CandidateRecord:
        """Store the global model of a finished run; refuses to overwrite a run id."""
        import torch

        from shared.fl.training import set_weights
        from shared.models import build_model

        self.check_available(run_id)
        target = self._dir(run_id)
        model = build_model(model_name)
        set_weights(model, weights)
        record = CandidateRecord(run_id, model_name, created_at, dict(lineage), dict(metrics))
        staging = Path(tempfile.mkdtemp(prefix=f".{run_id}.", dir=self.root))
        try:
            torch.save(model.state_dict(), staging / "model.pt")
            (staging / "candidate.json").write_text(
                json.dumps(record.to_dict(), indent=2, sort_keys=True)
            )
            os.replace(staging, target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return record

    def get(self, run_id: str) -> CandidateRecord:
        path = self._dir(run_id) / "candidate.json"
        if not path.is_file():
            raise RegistryError(f"no candidate {run_id!r} in {self.root}")
        if path.stat().st_size > _MAX_JSON_BYTES:
            raise RegistryError(f"candidate record {path} is too large")
        try:
            return CandidateRecord.from_dict(json.loads(path.read_text()))
        except json.JSONDecodeError as exc:
            raise RegistryError(f"candidate record {path} is not JSON: {exc}") from exc

    def load_state_dict(self, run_id: str) -> dict[str, Any]:
        """The candidate's torch ``state_dict`` (tensors only; no pickled code is run)."""
        import torch

        path = self._dir(run_id) / "model.pt"
        if not path.is_file():
            raise RegistryError(f"no model file for candidate {run_id!r}")
        state: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
        return state

    def list(self) -> list[CandidateRecord]:
        """Every candidate, oldest first."""
        records = [
            self.get(p.name)
            for p in self.root.iterdir()
            if p.is_dir() and not p.name.startswith(".") and (p / "candidate.json").is_file()
        ]
        return sorted(records, key=lambda r: (r.created_at, r.run_id))

"""The hub's ServerApp for Flower's Deployment Engine (SuperLink + SuperNodes).

The SuperLink starts this ServerApp (from the FAB in ``cloud_hub/fl/fab``) for each run
submitted with ``flwr run``. Its run config names files on the hub:

- ``config-path``: a TOML file whose ``[training]`` table is a
  :class:`~cloud_hub.fl.config.FederatedRunConfig` (``num_clients`` = SuperNodes to wait for),
- ``validation-path``: the hub-held validation set (``.npz`` with ``x`` and ``y``),
- ``results-dir``: where ``rounds.json`` / ``summary.json`` are written,
- ``model-store`` (optional): the :class:`~cloud_hub.fl.model_store.ModelStore` root,
- ``run-name`` (optional): the candidate's run id,
- ``initial-weights-path`` (optional): the model to start from (a retraining starts from the
  champion's weights, written by :func:`write_initial_state`); absent, fresh seeded weights.

Training, SecAgg+ and evaluation are exactly those of the simulation path
(:func:`cloud_hub.fl.server_app.build_server_app`). The training config is the one switch
for SecAgg+: the run config carries it to the clients (:func:`client_run_config`) and a run
whose run config says otherwise fails before round 1 (:func:`check_client_switches`). A run
in which no round succeeded, or (policy "abort") one that stopped early, fails: no candidate.
"""

from __future__ import annotations

import sys

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 (JetPack 6)
    import tomli as tomllib

import datetime as dt
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from cloud_hub.errors import HubConfigError
from cloud_hub.fl.config import FederatedRunConfig
from cloud_hub.fl.fast_grid import FastPullGrid
from cloud_hub.fl.recorder import RunRecorder
from cloud_hub.fl.server_app import ValidationEvaluator, build_server_app
from shared.files import atomic_write
from shared.fl.config_keys import RunConfigKey
from shared.fl.secure_prg import MASK_GENERATOR

__all__ = [
    "DeploymentRunSettings",
    "app",
    "check_client_switches",
    "client_run_config",
    "json_safe",
    "load_initial_state",
    "starting_weights",
    "write_initial_state",
]


@dataclass(frozen=True)
class DeploymentRunSettings:
    """Where a deployment run finds its inputs and puts its outputs."""

    config_path: Path
    validation_path: Path
    results_dir: Path
    model_store: Path | None = None
    run_name: str = ""
    initial_weights: Path | None = None  # None: fresh seeded weights

    @classmethod
    def from_run_config(cls, run_config: dict[str, Any]) -> DeploymentRunSettings:
        def path(key: str) -> Path:
            value = run_config.get(key)
            if not isinstance(value, str) or not value:
                raise HubConfigError(f"run config {key!r} must name a file or folder")
            return Path(value)

        store = run_config.get(RunConfigKey.MODEL_STORE)
        initial = run_config.get(RunConfigKey.INITIAL_WEIGHTS_PATH)
        if initial is not None and not isinstance(initial, str):
            raise HubConfigError(
                f"run config {RunConfigKey.INITIAL_WEIGHTS_PATH!r} must name a file, "
                f"not {initial!r}"
            )
        return cls(
            config_path=path(RunConfigKey.CONFIG_PATH),
            validation_path=path(RunConfigKey.VALIDATION_PATH),
            results_dir=path(RunConfigKey.RESULTS_DIR),
            model_store=Path(store) if isinstance(store, str) and store else None,
            run_name=str(run_config.get(RunConfigKey.RUN_NAME, "")),
            initial_weights=Path(initial) if initial else None,
        )

    def to_run_config(self) -> dict[str, Any]:
        """The run-config entries :meth:`from_run_config` reads."""
        entries: dict[str, Any] = {
            RunConfigKey.CONFIG_PATH: str(self.config_path),
            RunConfigKey.VALIDATION_PATH: str(self.validation_path),
            RunConfigKey.RESULTS_DIR: str(self.results_dir),
            RunConfigKey.RUN_NAME: self.run_name,
        }
        if self.model_store is not None:
            entries[RunConfigKey.MODEL_STORE] = str(self.model_store)
        if self.initial_weights is not None:
            entries[RunConfigKey.INITIAL_WEIGHTS_PATH] = str(self.initial_weights)
        return entries

    def training_config(self) -> FederatedRunConfig:
        try:
            data = tomllib.loads(self.config_path.read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise HubConfigError(f"cannot read {self.config_path}: {exc}") from exc
        return FederatedRunConfig.from_mapping(data.get("training", {}))


def client_run_config(config: FederatedRunConfig) -> dict[str, Any]:
    """The run-config entries the agents' ClientApp reads (must match the server)."""
    return config.client_run_config()


#: Run-config switches the clients follow, with the value a client assumes when it is absent.
_CLIENT_SWITCHES: dict[str, Any] = {
    RunConfigKey.SECURE_AGGREGATION: True,
    RunConfigKey.DP_CLIPPING: False,
    RunConfigKey.MASK_GENERATOR: MASK_GENERATOR,
}


def check_client_switches(run_config: dict[str, Any], config: FederatedRunConfig) -> None:
    """Refuse a run whose run config tells the clients otherwise than the training config.

    The training config is the one switch (SecAgg+, clipping, mask generator); the run
    config only carries it to the clients, so a run submitted with other values (by hand, or
    an older FAB's defaults) would have clients and hub disagree: it fails before round 1."""
    wanted = client_run_config(config)
    for key, absent in _CLIENT_SWITCHES.items():
        told = run_config.get(key, absent)
        if told != wanted[key]:
            raise HubConfigError(
                f"run config {key}={told!r} disagrees with the hub's training config "
                f"({wanted[key]!r}); submit the run with the entries the training config derives"
            )


def json_safe(value: Any) -> Any:
    """``value`` with every NaN or infinite float replaced by ``None`` (JSON has neither)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def write_initial_state(path: Path, state: Mapping[str, Any]) -> None:
    """Write a model's ``state_dict`` (tensors or arrays) where a run config can name it."""
    import io

    import numpy as np

    arrays = {
        name: np.asarray(value.detach().cpu() if hasattr(value, "detach") else value)
        for name, value in state.items()
    }
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)  # type: ignore[arg-type]
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, buffer.getvalue())  # R15


def load_initial_state(path: Path) -> dict[str, Any]:
    """The ``state_dict`` :func:`write_initial_state` wrote (no pickled objects are read);
    ``HubConfigError`` for a file that is missing, unreadable or holds non-finite values."""
    import zipfile

    import numpy as np
    import torch

    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: np.array(data[name]) for name in data.files}
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise HubConfigError(f"cannot read the initial weights {path}: {exc}") from exc
    for name, array in arrays.items():
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            raise HubConfigError(f"initial weights {path}: {name} is not finite")
    return {name: torch.from_numpy(array) for name, array in arrays.items()}


def starting_weights(settings: DeploymentRunSettings, config: FederatedRunConfig) -> list[Any]:
    """The run's first global model: the named initial weights (they must fit the model,
    else ``HubConfigError``) or fresh weights seeded by the training config."""
    from cloud_hub.fl.run import initial_weights

    state = None
    if settings.initial_weights is not None:
        state = load_initial_state(settings.initial_weights)
    return initial_weights(config.model_name, config.seed, state)


def _write(path: Path, payload: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(json_safe(payload), indent=2, default=str, allow_nan=False)
    atomic_write(path, text.encode("utf-8"))  # R15


def run_label(run_name: str | None, run_id: int) -> str:
    """The run id a summary names: the hub's run name, else one made from Flower's run id."""
    return run_name or f"deploy-{run_id}"


def write_failed_summary(results_dir: Path, label: str, error: str) -> Path:
    """``summary.json`` for the run ``label`` (:func:`run_label`) that failed with ``error``:
    the hub's waiter reads it at once instead of sitting out its timeout."""
    path = results_dir / "summary.json"
    _write(path, {"status": "failed", "run_id": label, "error": error})
    return path


app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    settings = DeploymentRunSettings.from_run_config(dict(context.run_config))
    run_id = run_label(settings.run_name, context.run_id)
    try:
        _train(settings, run_id, grid, context)
    except Exception as exc:  # whatever stops the run, the waiter reads it at once
        write_failed_summary(settings.results_dir, run_id, f"{type(exc).__name__}: {exc}")
        raise


def _train(settings: DeploymentRunSettings, run_id: str, grid: Grid, context: Context) -> None:
    import numpy as np

    from cloud_hub.fl.model_store import ModelStore

    config = settings.training_config()
    check_client_switches(dict(context.run_config), config)
    initial = starting_weights(settings, config)  # a bad file fails before round 1
    with np.load(settings.validation_path, allow_pickle=False) as data:
        x_val, y_val = data["x"], data["y"]
    recorder = RunRecorder(
        on_round=lambda m: _write(
            settings.results_dir / "rounds.json", [r.to_dict() for r in recorder.rounds]
        )
    )
    evaluator = ValidationEvaluator(config.model_name, x_val, y_val, recorder)
    server_app = build_server_app(
        config, initial_weights=initial, evaluator=evaluator, recorder=recorder
    )
    server_app(FastPullGrid(grid), context)
    weights = recorder.final_model(run_id, config.num_rounds, config.on_round_failure)
    unmasked_with, reported = recorder.mask_generators()
    lineage = config.lineage(mask_generator=unmasked_with, client_mask_generators=reported)
    summary: dict[str, Any] = {
        "status": "ok",
        "run_id": run_id,
        "flower_run_id": context.run_id,
        "final_accuracy": recorder.rounds[-1].accuracy,
        "initial_weights": "fresh" if settings.initial_weights is None else "given",
        "rounds": [r.to_dict() for r in recorder.rounds],
        "lineage": lineage,
    }
    if settings.model_store is not None:
        ModelStore(settings.model_store).save_candidate(
            run_id=run_id,
            model_name=config.model_name,
            weights=weights,
            lineage={**lineage, "run_id": run_id, "engine": "deployment"},
            metrics={"accuracy": recorder.rounds[-1].accuracy, "loss": recorder.rounds[-1].loss},
            created_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        )
    _write(settings.results_dir / "summary.json", summary)

"""The hub's asynchronous ServerApp for Flower's Deployment Engine (FAB ``cloud_hub/fl/fab_async``).

The same run-config contract as :mod:`cloud_hub.fl.superlink_app` (config, validation and
results paths, model store, run name, initial weights: version 0 is the champion when the
hub names one); the config file's ``[async]`` table holds
``devices`` (SuperNodes to wait for), ``buffer_size``, ``buffers``, ``server_lr``,
``max_staleness`` and ``seed``. The run orders every idle device, folds buffers with
:class:`~cloud_hub.fl.async_run.AsyncBufferedRun` (SecAgg+ each) until ``buffers`` new
versions exist, then writes ``summary.json`` (with every buffer's lineage) and stores the
candidate.
"""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

import tomllib
from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from cloud_hub.errors import HubConfigError, TrainingError
from cloud_hub.fl.superlink_app import DeploymentRunSettings, _write, run_label

__all__ = ["app"]

_NODE_WAIT_S = 120.0

app = ServerApp()


def _async_table(settings: DeploymentRunSettings) -> dict[str, Any]:
    try:
        table = tomllib.loads(settings.config_path.read_text()).get("async", {})
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise HubConfigError(f"cannot read {settings.config_path}: {exc}") from exc
    if not isinstance(table, dict):
        raise HubConfigError("[async] must be a table")
    return table


def _wait_for_nodes(grid: Grid, count: int) -> list[int]:
    deadline = time.monotonic() + _NODE_WAIT_S
    while True:
        nodes = sorted(grid.get_node_ids())
        if len(nodes) >= count:
            return nodes[:count]
        if time.monotonic() > deadline:
            raise TrainingError(f"only {len(nodes)} of {count} devices connected")
        time.sleep(1.0)


def _initial_state(settings: DeploymentRunSettings) -> dict[str, Any] | None:
    """The model version 0 is (the champion's, when the hub names one), else None: fresh."""
    from cloud_hub.fl.superlink_app import load_initial_state

    if settings.initial_weights is None:
        return None
    return load_initial_state(settings.initial_weights)


@app.main()
def main(grid: Grid, context: Context) -> None:
    import numpy as np

    from cloud_hub.fl.async_run import AsyncBufferedRun
    from cloud_hub.fl.config import SecAggConfig
    from cloud_hub.fl.fedbuff import FedBuffConfig
    from cloud_hub.fl.model_store import ModelStore
    from cloud_hub.fl.run import initial_weights
    from shared.fl.training import evaluate_model, set_weights
    from shared.models import build_model

    settings = DeploymentRunSettings.from_run_config(dict(context.run_config))
    table = _async_table(settings)
    model_name = str(context.run_config.get("model-name", "sensor-mlp"))
    fedbuff = FedBuffConfig(
        buffer_size=int(table.get("buffer_size", 3)),
        server_lr=float(table.get("server_lr", 1.0)),
        max_staleness=int(table.get("max_staleness", 5)),
    )
    buffers = int(table.get("buffers", 2))
    nodes = _wait_for_nodes(grid, int(table.get("devices", fedbuff.buffer_size)))
    with np.load(settings.validation_path, allow_pickle=False) as data:
        x_val, y_val = data["x"], data["y"]
    model = build_model(model_name)
    run = AsyncBufferedRun(
        grid,
        initial_weights(model_name, int(table.get("seed", 0)), _initial_state(settings)),
        fedbuff=fedbuff,
        secagg=SecAggConfig(reconstruction_threshold=2),
    )
    versions: list[dict[str, Any]] = []
    for _attempt in range(2 * buffers):
        if run.version >= buffers:
            break
        holding = run.holders  # one ledger read per round
        run.order([n for n in nodes if n not in holding])
        record = run.run_buffer(nodes)
        if record is not None and record.completed:
            set_weights(model, run.weights)
            loss, accuracy = evaluate_model(model, x_val, y_val)
            versions.append({"version": run.version, "accuracy": accuracy, "loss": loss})
    run_id = run_label(settings.run_name, context.run_id)
    summary = {
        "status": "ok" if run.version >= buffers else "failed",
        "run_id": run_id,
        "mode": "async",
        "versions": versions,
        "buffers": [b.to_dict() for b in run.buffers],
    }
    _write(settings.results_dir / "summary.json", summary)
    if run.version < buffers:
        raise TrainingError(f"asynchronous run {run_id}: {run.version} of {buffers} buffers")
    if settings.model_store is not None:
        ModelStore(settings.model_store).save_candidate(
            run_id=run_id,
            model_name=model_name,
            weights=run.weights,
            lineage={"mode": "async", "run_id": run_id, "engine": "deployment"},
            metrics={"accuracy": versions[-1]["accuracy"], "loss": versions[-1]["loss"]},
            created_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        )

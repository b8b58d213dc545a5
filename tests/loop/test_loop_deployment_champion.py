"""A retraining over the Deployment Engine starts from the champion's weights: the pipeline
hands the model its devices run (the champion's state from the model store) to the
deployment training, which names it in the run config the ServerApp reads."""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cloud_hub.errors import TrainingError
from cloud_hub.fl.model_store import ModelStore
from cloud_hub.loop.config import LoopConfig
from cloud_hub.loop.pipeline import RetrainPipeline
from cloud_hub.loop.policy import RetrainPolicy
from cloud_hub.registry import catalog, devices
from shared.data.sensors import generate_sensor_data
from shared.fl.training import get_weights
from shared.messages import InstalledModel, Status
from shared.models import build_model
from simulations.demo.fleet import PROBLEM_SEED
from tests.loop.test_loop_pipeline import CLASS, DEVICES, seeded_fleet


class _StandInDeployment:
    """Records what the pipeline asks of the Deployment Engine; the run then fails."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def train(self, run_id: str, device_ids: Any, fl_config: Any, *args: Any, **kw: Any) -> Any:
        self.calls.append(kw)
        raise TrainingError("stand-in: no devices")


def _champion(root: Path, registry: Any) -> list[Any]:
    """Version 1, trained by run ``rt-champion``, installed on every device."""
    weights = [w + 0.25 for w in get_weights(build_model("sensor-mlp", seed=7))]
    ModelStore(root / "loop" / "models").save_candidate(
        run_id="rt-champion",
        model_name="sensor-mlp",
        weights=weights,
        lineage={},
        metrics={},
        created_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    )
    with registry.session() as s:
        catalog.add_model_version(
            s, "sensor-mlp", 1, training_run_id="rt-champion", now=time.time()
        )
        devices.record_statuses(
            s,
            [
                Status(d, online=True, installed=InstalledModel("sensor-mlp", 1, "b-1"))
                for d in DEVICES
            ],
            now=time.time(),
        )
    return weights


def test_the_deployment_engine_is_given_the_champions_weights(tmp_path: Path) -> None:
    registry, keys = seeded_fleet(tmp_path)
    try:
        champion = _champion(tmp_path, registry)
        x, y = generate_sensor_data(60, seed=PROBLEM_SEED, sample_seed=1)
        deployment = _StandInDeployment()
        pipeline = RetrainPipeline(
            registry=registry,
            keys=keys,
            rollouts=None,
            validation=(x, y),
            calibration=(x, y),
            config=LoopConfig(
                work_dir=tmp_path / "loop",
                training_engine="deployment",
                policy=RetrainPolicy(min_devices=3),
            ),
            deployment=deployment,  # type: ignore[arg-type]
        )
        out = pipeline.run(CLASS, DEVICES, trigger="drift", reason="drift")
        assert out.state == "failed" and "stand-in" in out.detail
        (call,) = deployment.calls
        state = call.get("initial_state")
        assert state is not None, "the retraining would start from fresh weights"
        for got, want in zip(state.values(), champion, strict=True):
            assert torch.equal(got, torch.from_numpy(np.asarray(want)))
    finally:
        registry.close()

"""Asynchronous buffered SecAgg+ on Flower's Deployment Engine: a real SuperLink and three
SuperNodes as processes (TLS from the hub CA, pinned to the async FAB), the agent's async
ClientApp holding each update in its node's held-update folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cloud_hub.fl.model_store import ModelStore
from cloud_hub.fl.superlink import wait_for_summary
from shared.data import generate_sensor_data
from shared.fl.config_keys import AsyncTrainingKey
from simulations.harness.federation import local_federation

pytestmark = pytest.mark.slow

FAB_ASYNC = Path(__file__).resolve().parents[2] / "cloud_hub" / "fl" / "fab_async"


def test_async_buffers_on_superlink_and_three_supernodes(tmp_path: Path) -> None:
    for i in range(3):
        x, y = generate_sensor_data(80, seed=3, sample_seed=10 + i)
        np.savez(tmp_path / f"device-{i}.npz", x=x, y=y)
    x, y = generate_sensor_data(300, seed=3, sample_seed=99)
    np.savez(tmp_path / "validation.npz", x=x, y=y)
    (tmp_path / "train.toml").write_text("[async]\ndevices = 3\nbuffer_size = 3\nbuffers = 2\n")
    held = [tmp_path / f"held-{i}" for i in range(3)]
    federation = local_federation(
        tmp_path,
        devices=3,
        run_id="async-deploy",
        fab_dir=FAB_ASYNC,
        node_config=lambda i: {AsyncTrainingKey.HELD_UPDATE_DIR: str(held[i])},
    )
    with federation.running() as link:
        link.submit_run(
            {
                "config-path": str(tmp_path / "train.toml"),
                "validation-path": str(tmp_path / "validation.npz"),
                "results-dir": str(tmp_path / "results"),
                "model-store": str(tmp_path / "models"),
                "run-name": "async-deploy",
                "model-name": "sensor-mlp",
            },
            fab_dir=federation.fab_dir,
            expected_fab_sha256=federation.fab_sha256,
        )
        summary = wait_for_summary(tmp_path / "results", timeout_s=300)
    assert summary["status"] == "ok", summary
    assert [b["new_version"] for b in summary["buffers"]] == [1, 2]
    assert all(b["secure"] and len(b["folded"]) == 3 for b in summary["buffers"])
    assert summary["versions"][-1]["accuracy"] > 0.5
    # every update was held on its device, then released after its buffer
    assert all(h.is_dir() and not (h / "held-update.npz").exists() for h in held)
    assert ModelStore(tmp_path / "models").get("async-deploy").lineage["mode"] == "async"

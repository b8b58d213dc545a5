"""The asynchronous ServerApp's version 0 is the model the hub names (the champion's weights,
as the synchronous one starts from them), else fresh seeded weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cloud_hub.fl.run import initial_weights
from cloud_hub.fl.superlink_app import DeploymentRunSettings, write_initial_state
from cloud_hub.fl.superlink_async_app import _initial_state
from shared.models import build_model


def _settings(tmp_path: Path, initial: Path | None) -> DeploymentRunSettings:
    return DeploymentRunSettings(
        config_path=tmp_path / "train.toml",
        validation_path=tmp_path / "validation.npz",
        results_dir=tmp_path / "results",
        initial_weights=initial,
    )


def test_version_zero_is_the_named_champion(tmp_path: Path) -> None:
    champion = build_model("sensor-mlp", seed=7).state_dict()
    write_initial_state(tmp_path / "initial.npz", champion)
    state = _initial_state(_settings(tmp_path, tmp_path / "initial.npz"))
    assert state is not None
    got = initial_weights("sensor-mlp", 0, state)
    want = [t.detach().numpy() for t in champion.values()]
    assert all(np.array_equal(g, w) for g, w in zip(got, want, strict=True))
    fresh = initial_weights("sensor-mlp", 0, None)
    assert not all(np.array_equal(g, f) for g, f in zip(got, fresh, strict=True))


def test_without_a_champion_version_zero_is_fresh(tmp_path: Path) -> None:
    assert _initial_state(_settings(tmp_path, None)) is None


def test_the_async_fab_declares_the_initial_weights_entry() -> None:
    text = (
        Path(__file__).resolve().parents[2] / "cloud_hub/fl/fab_async/pyproject.toml"
    ).read_text()
    assert 'initial-weights-path = ""' in text

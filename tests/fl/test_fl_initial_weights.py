"""The Deployment Engine's ServerApp starts from the weights its run config names (a
retraining starts from the champion's), from fresh seeded weights when none are named, and
refuses a file that does not fit the model before round 1."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from flwr.app import Context, RecordDict

from cloud_hub.errors import HubConfigError
from cloud_hub.fl import FederatedRunConfig, SecAggConfig, superlink_app
from cloud_hub.fl.superlink_app import (
    DeploymentRunSettings,
    load_initial_state,
    write_initial_state,
)
from shared.fl.config_keys import RunConfigKey
from shared.fl.training import get_weights
from shared.models import build_model

MODEL = "sensor-mlp"


class _Started(Exception):
    """Raised by the stand-in ServerApp: the run got as far as round 1."""


def _champion_state() -> dict[str, Any]:
    state = build_model(MODEL, seed=123).state_dict()
    return {name: value + 0.5 for name, value in state.items()}  # unlike any seeded model


def _run_config(tmp_path: Path, initial: Path | None) -> dict[str, Any]:
    config = FederatedRunConfig(
        model_name=MODEL, num_clients=3, min_fit_clients=3, secagg=SecAggConfig(enabled=True)
    )
    (tmp_path / "train.toml").write_text(
        f'[training]\nmodel_name = "{MODEL}"\nnum_clients = 3\nmin_fit_clients = 3\n'
    )
    np.savez(tmp_path / "validation.npz", x=np.zeros((4, 8), np.float32), y=np.zeros(4, np.int64))
    settings = DeploymentRunSettings(
        config_path=tmp_path / "train.toml",
        validation_path=tmp_path / "validation.npz",
        results_dir=tmp_path / "results",
        initial_weights=initial,
    )
    return settings.to_run_config() | config.client_run_config()


def _first_global_model(tmp_path: Path, monkeypatch: Any, initial: Path | None) -> list[Any]:
    """The weights the ServerApp hands Flower's workflow as round 1's global model."""
    seen: list[Any] = []

    def capture(config: Any, *, initial_weights: Any, **_: Any) -> Any:
        seen.append(initial_weights)
        raise _Started

    monkeypatch.setattr(superlink_app, "build_server_app", capture)
    run_config = _run_config(tmp_path, initial)
    context = Context(
        run_id=7, node_id=0, node_config={}, state=RecordDict(), run_config=run_config
    )
    with pytest.raises(_Started):
        superlink_app.main(None, context)  # type: ignore[arg-type]
    return seen[0]


def test_a_run_naming_initial_weights_starts_from_them(tmp_path: Path, monkeypatch: Any) -> None:
    champion = _champion_state()
    write_initial_state(tmp_path / "initial.npz", champion)
    weights = _first_global_model(tmp_path, monkeypatch, tmp_path / "initial.npz")
    expected = [value.numpy() for value in champion.values()]
    assert len(weights) == len(expected)
    for got, want in zip(weights, expected, strict=True):
        np.testing.assert_array_equal(got, want)


def test_a_run_without_initial_weights_starts_from_fresh_seeded_ones(
    tmp_path: Path, monkeypatch: Any
) -> None:
    weights = _first_global_model(tmp_path, monkeypatch, None)
    fresh = get_weights(build_model(MODEL, seed=FederatedRunConfig(model_name=MODEL).seed))
    for got, want in zip(weights, fresh, strict=True):
        np.testing.assert_array_equal(got, want)


def test_the_initial_weights_file_round_trips_tensors(tmp_path: Path) -> None:
    champion = _champion_state()
    write_initial_state(tmp_path / "w.npz", champion)
    loaded = load_initial_state(tmp_path / "w.npz")
    assert list(loaded) == list(champion)
    assert all(torch.equal(loaded[k], champion[k]) for k in champion)


@pytest.mark.parametrize(
    ("state", "match"),
    [
        ({"layer.weight": np.ones((2, 2), np.float32)}, "does not fit sensor-mlp"),
        ({name: value * float("nan") for name, value in _champion_state().items()}, "not finite"),
    ],
    ids=["another-model", "nan"],
)
def test_initial_weights_that_do_not_fit_fail_the_run_before_round_1(
    tmp_path: Path, monkeypatch: Any, state: dict[str, Any], match: str
) -> None:
    write_initial_state(tmp_path / "bad.npz", state)
    monkeypatch.setattr(superlink_app, "build_server_app", pytest.fail)
    run_config = _run_config(tmp_path, tmp_path / "bad.npz")
    context = Context(
        run_id=7, node_id=0, node_config={}, state=RecordDict(), run_config=run_config
    )
    with pytest.raises(HubConfigError, match=match):
        superlink_app.main(None, context)  # type: ignore[arg-type]
    summary = json.loads((tmp_path / "results" / "summary.json").read_text())
    assert summary["status"] == "failed" and match in summary["error"]


def test_a_missing_file_or_a_non_text_entry_is_refused(tmp_path: Path) -> None:
    with pytest.raises(HubConfigError, match="cannot read the initial weights"):
        load_initial_state(tmp_path / "absent.npz")
    run_config = _run_config(tmp_path, None) | {RunConfigKey.INITIAL_WEIGHTS_PATH: 3}
    with pytest.raises(HubConfigError, match="must name a file"):
        DeploymentRunSettings.from_run_config(run_config)


def test_the_flower_app_declares_every_run_config_key_the_hub_submits(tmp_path: Path) -> None:
    """Flower refuses a run whose run config has a key the FAB does not declare."""
    import tomllib

    from cloud_hub.fl.superlink import FAB_DIR

    declared = tomllib.loads((FAB_DIR / "pyproject.toml").read_text())["tool"]["flwr"]["app"]
    settings = DeploymentRunSettings(
        config_path=tmp_path / "train.toml",
        validation_path=tmp_path / "validation.npz",
        results_dir=tmp_path / "results",
        model_store=tmp_path / "models",
        run_name="rt-1",
        initial_weights=tmp_path / "initial.npz",
    )
    submitted = settings.to_run_config() | FederatedRunConfig(model_name=MODEL).client_run_config()
    assert set(submitted) <= set(declared["config"])

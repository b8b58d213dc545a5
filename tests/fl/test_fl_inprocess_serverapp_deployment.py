"""The in-process ServerApp on a real SuperLink process (cloud_hub.fl.inprocess_serverapp):
a ServerApp that raises and a FAB that cannot load fail their runs at once with the reason
and the SuperLink serves the next run; over real SuperNodes a SecAgg+ run aggregates
exactly what the forked ServerApp aggregates."""

from __future__ import annotations

import dataclasses
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from cloud_hub.errors import TrainingError
from cloud_hub.fl.model_store import ModelStore
from cloud_hub.fl.superlink import (
    FAB_DIR,
    SuperLinkConfig,
    SuperLinkProcess,
    wait_for_summary,
)
from shared.data import generate_sensor_data
from shared.net import free_port
from simulations.harness.federation import local_federation

pytestmark = pytest.mark.integration

RAISING_APP = """
from flwr.serverapp import ServerApp

app = ServerApp()


@app.main()
def main(grid, context):
    raise RuntimeError("the ServerApp gave up: boom")
"""


def _fab_with_serverapp(root: Path, name: str, component: str, module: str = "") -> Path:
    """fedfleet's FAB with its ServerApp component replaced (and ``module`` added)."""
    fab = root / name
    shutil.copytree(FAB_DIR, fab, ignore=shutil.ignore_patterns("__pycache__"))
    manifest = fab / "pyproject.toml"
    ours = 'serverapp = "cloud_hub.fl.superlink_app:app"'
    assert ours in manifest.read_text()
    manifest.write_text(manifest.read_text().replace(ours, f'serverapp = "{component}"'))
    if module:
        (fab / f"{component.split(':')[0]}.py").write_text(module)
    return fab


def _fails_at_once(link: SuperLinkProcess, fab: Path, results: Path) -> str:
    link.submit_run({"results-dir": str(results), "run-name": results.name}, fab_dir=fab)
    with pytest.raises(TrainingError) as failed:
        wait_for_summary(results, timeout_s=120, link=link, poll_s=0.1)
    return str(failed.value)


@pytest.mark.timeout(240)
def test_failed_runs_are_reported_at_once_and_the_superlink_serves_the_next(
    tmp_path: Path,
) -> None:
    unloadable = _fab_with_serverapp(tmp_path, "unloadable", "no_such_module:app")
    raising = _fab_with_serverapp(tmp_path, "raising", "raising_app:app", RAISING_APP)
    link = SuperLinkProcess(
        SuperLinkConfig(port=free_port(), insecure=True), workdir=tmp_path / "link"
    )
    assert link.serverapp == "inprocess"
    with link:
        error = _fails_at_once(link, unloadable, tmp_path / "run-1")
        assert "deployment run failed" in error and "no_such_module" in error
        started = time.monotonic()
        error = _fails_at_once(link, raising, tmp_path / "run-2")  # the next run is served
        assert "RuntimeError: the ServerApp gave up: boom" in error
        assert time.monotonic() - started < 30  # at once: not the waiter's timeout
        assert link.is_running()
    log = link.log_tail(100_000)
    assert "flwr-serverapp task" not in log  # no ServerApp process was forked
    assert log.count("the ServerApp failed") == 2


def _secagg_inputs(root: Path) -> dict[str, str]:
    for i in range(3):
        x, y = generate_sensor_data(60, seed=3, sample_seed=10 + i)
        np.savez(root / f"device-{i}.npz", x=x, y=y)
    x, y = generate_sensor_data(200, seed=3, sample_seed=99)
    np.savez(root / "validation.npz", x=x, y=y)
    (root / "train.toml").write_text(
        '[training]\nmodel_name = "sensor-mlp"\nnum_clients = 3\nmin_fit_clients = 3\n'
        "num_rounds = 2\nlocal_epochs = 1\n[training.secagg]\nreconstruction_threshold = 2\n"
    )
    return {
        "config-path": str(root / "train.toml"),
        "validation-path": str(root / "validation.npz"),
        "results-dir": str(root / "results"),
        "model-store": str(root / "models"),
        "run-name": "same-aggregate",
        "model-name": "sensor-mlp",
    }


def _secagg_run(root: Path, serverapp: str) -> tuple[dict[str, object], dict[str, object]]:
    """A SecAgg+ run over three real SuperNodes; its summary and its final weights."""
    root.mkdir()
    run_config = _secagg_inputs(root)
    federation = local_federation(root, devices=3, run_id="same-aggregate")
    link = SuperLinkProcess(
        federation.link.config, workdir=federation.link.workdir, serverapp=serverapp
    )
    federation = dataclasses.replace(federation, link=link)
    with federation.running() as running:
        running.submit_run(run_config, expected_fab_sha256=federation.fab_sha256)
        summary = wait_for_summary(root / "results", timeout_s=240, link=running)
    weights = ModelStore(root / "models").load_state_dict("same-aggregate")
    return summary, weights


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_secagg_run_aggregates_the_same_in_process_as_forked(tmp_path: Path) -> None:
    inprocess, inprocess_weights = _secagg_run(tmp_path / "inprocess", "inprocess")
    forked, forked_weights = _secagg_run(tmp_path / "forked", "forked")

    for summary in (inprocess, forked):
        assert summary["status"] == "ok"
        assert summary["lineage"]["secagg"]["enabled"] is True  # type: ignore[index]
    assert (tmp_path / "inprocess" / "results" / "summary.json").exists()
    # SecAgg+ quantizes each update with stochastic rounding (Flower's quantize draws from
    # np.random), so two runs differ by a few quantization steps (~2e-4 here); masks that did
    # not cancel, or a wrong sum, would be off by orders of magnitude more
    assert sorted(inprocess_weights) == sorted(forked_weights)
    for name, value in inprocess_weights.items():
        np.testing.assert_allclose(
            np.asarray(value), np.asarray(forked_weights[name]), rtol=0, atol=5e-3
        )
    for ours, theirs in zip(inprocess["rounds"], forked["rounds"], strict=True):  # type: ignore[call-overload]
        assert ours["round"] == theirs["round"]
        assert abs(ours["loss"] - theirs["loss"]) < 0.01 * theirs["loss"]
    link_log = (tmp_path / "inprocess" / "link" / "superlink.log").read_text()
    assert "runs in the SuperLink" in link_log and "flwr-serverapp task" not in link_log

"""Flower Datasets partitioners on local arrays; scenario files; ``cloud-hub simulate``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cloud_hub.cli import main as hub_main
from cloud_hub.errors import HubConfigError
from cloud_hub.fl.partition import PartitionSpec, data_fingerprint, partition_arrays
from cloud_hub.fl.scenario import load_scenario
from shared.data import load_digits_dataset

SIMULATIONS = Path(__file__).resolve().parents[2] / "simulations"


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    return load_digits_dataset()


def _labels_per_client(parts) -> list[int]:  # type: ignore[no-untyped-def]
    return [len(np.unique(p.y)) for p in parts]


def test_iid_covers_every_sample_once(digits) -> None:
    x, y = digits
    parts = partition_arrays(x, y, 10, PartitionSpec(kind="iid"))
    assert sum(len(p.y) for p in parts) == len(y)
    assert max(len(p.y) for p in parts) - min(len(p.y) for p in parts) <= 1
    assert min(_labels_per_client(parts)) == 10


def test_dirichlet_skews_labels_more_as_alpha_falls(digits) -> None:
    x, y = digits

    def skew(alpha: float) -> float:
        parts = partition_arrays(x, y, 20, PartitionSpec(kind="dirichlet", alpha=alpha))
        assert sum(len(p.y) for p in parts) == len(y)
        shares = [np.bincount(p.y, minlength=10).max() / len(p.y) for p in parts if len(p.y)]
        return float(np.mean(shares))

    assert skew(0.1) > skew(100.0) + 0.2


def test_shards_give_each_client_few_labels(digits) -> None:
    x, y = digits
    parts = partition_arrays(x, y, 10, PartitionSpec(kind="shards", classes_per_client=2))
    assert max(_labels_per_client(parts)) <= 2


def test_partition_errors_and_fingerprint(digits) -> None:
    x, y = digits
    with pytest.raises(HubConfigError, match="unknown partitioner"):
        PartitionSpec(kind="zipf")
    with pytest.raises(HubConfigError, match="cannot be split"):
        partition_arrays(x[:5], y[:5], 10, PartitionSpec())
    a = partition_arrays(x, y, 4, PartitionSpec(seed=1))
    b = partition_arrays(x, y, 4, PartitionSpec(seed=1))
    assert data_fingerprint(a) == data_fingerprint(b)


def test_shipped_scenarios_are_valid() -> None:
    files = sorted(SIMULATIONS.glob("*.toml"))
    assert len(files) >= 5
    for path in files:
        load_scenario(path)


def test_bad_scenarios_are_refused_before_running(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[training]\nnum_clients = 4\n[training.secagg]\nreconstruction_threshold = 9\n")
    with pytest.raises(HubConfigError, match="exceeds the clients per round"):
        load_scenario(bad)
    bad.write_text('[training.strategy]\nname = "fedsomething"\n')
    with pytest.raises(HubConfigError, match="unknown strategy"):
        load_scenario(bad)
    bad.write_text("[scenario\n")
    with pytest.raises(HubConfigError, match="cannot read scenario"):
        load_scenario(bad)
    assert hub_main(["simulate", str(bad)]) == 2


def test_simulate_command_writes_rounds_plot_and_summary(tmp_path: Path, capsys) -> None:
    scenario = tmp_path / "sensors.toml"
    scenario.write_text(
        '[scenario]\nname = "cli-test"\ndataset = "sensors"\nsamples = 500\n'
        '[partition]\nkind = "dirichlet"\nalpha = 1.0\n'
        "[training]\nnum_clients = 4\nnum_rounds = 5\nlocal_epochs = 2\nbatch_size = 16\n"
    )
    out = tmp_path / "out"
    code = hub_main(
        [
            "simulate",
            str(scenario),
            "--rounds",
            "2",
            "--out",
            str(out),
            "--model-store",
            str(tmp_path / "store"),
        ]
    )
    assert code == 0
    rounds = json.loads((out / "rounds.json").read_text())
    assert [r["round"] for r in rounds] == [0, 1, 2]
    assert rounds[-1]["accuracy"] > rounds[0]["accuracy"]
    assert (out / "metrics.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["lineage"]["secagg"]["enabled"] is True
    captured = capsys.readouterr()
    assert "round   2/2" in captured.err and "final accuracy" in captured.out
    assert len(list((tmp_path / "store").iterdir())) == 1

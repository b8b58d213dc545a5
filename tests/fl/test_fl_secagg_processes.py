"""SecAgg+ hardening across processes: a real SuperLink and three SuperNodes (Flower's
Deployment Engine over TLS), each ClientApp in its own process, none sharing the server's
patch of Flower's mask generator.

A tripwire (``secagg_tripwire/sitecustomize.py``, on ``PYTHONPATH`` of every spawned
process) records each call of Flower's weak ``pseudo_rand_gen``, each client's quantized
update before masking and the server's unmasked sum. The proof: the server's sum is exactly
the sum of the clients' quantized updates (the masks cancelled, so clients and server used
the same generator), and the weak generator was never called in any process. Without the
client-side wrapper (``shared.fl.mods.hardened_secaggplus_mod``) the clients mask with the
weak generator: the tripwire fires and the sum is wrong.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from cloud_hub.fl.superlink import wait_for_summary
from shared.data import generate_sensor_data
from simulations.harness.federation import local_federation

pytestmark = pytest.mark.integration

TRIPWIRE = Path(__file__).resolve().parent / "secagg_tripwire"
CLIENTS = 3


def _arrays(path: Path) -> list[np.ndarray]:
    with np.load(path) as data:
        return [data[f"arr_{i}"] for i in range(len(data.files))]


def _write_inputs(root: Path) -> None:
    for i in range(CLIENTS):
        x, y = generate_sensor_data(40, seed=3, sample_seed=10 + i)
        np.savez(root / f"device-{i}.npz", x=x, y=y)
    x, y = generate_sensor_data(100, seed=3, sample_seed=99)
    np.savez(root / "validation.npz", x=x, y=y)
    (root / "train.toml").write_text(
        '[training]\nmodel_name = "sensor-mlp"\n'
        f"num_clients = {CLIENTS}\nmin_fit_clients = {CLIENTS}\nnum_rounds = 1\n"
        "local_epochs = 1\n[training.secagg]\nreconstruction_threshold = 2\n"
    )


def _run_secagg_round(root: Path) -> dict[str, object]:
    federation = local_federation(root, devices=CLIENTS, run_id="secagg-processes")
    with federation.running() as link:
        link.submit_run(
            {
                "config-path": str(root / "train.toml"),
                "validation-path": str(root / "validation.npz"),
                "results-dir": str(root / "results"),
                "model-store": str(root / "models"),
                "run-name": "secagg-processes",
                "model-name": "sensor-mlp",
            },
            expected_fab_sha256=federation.fab_sha256,
        )
        return wait_for_summary(root / "results", timeout_s=150)


@pytest.mark.timeout(240)
def test_clients_in_their_own_processes_mask_with_the_secure_generator(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    records = tmp_path / "tripwire"
    records.mkdir()
    pythonpath = os.pathsep.join(p for p in (str(TRIPWIRE), os.environ.get("PYTHONPATH")) if p)
    monkeypatch.setenv("PYTHONPATH", pythonpath)  # inherited by every spawned process
    monkeypatch.setenv("FEDFLEET_SECAGG_TRIPWIRE_DIR", str(records))
    _write_inputs(tmp_path)

    summary = _run_secagg_round(tmp_path)

    weak_calls = sorted(p.read_text() for p in records.glob("weak-*.json"))
    assert weak_calls == [], f"Flower's weak mask generator was called: {weak_calls}"
    clients = sorted(records.glob("client-*.npz"))
    servers = sorted(records.glob("server-*.npz"))
    assert len(clients) == CLIENTS and len(servers) == 1, (clients, servers)
    client_pids = {p.name.split("-")[1] for p in clients}
    server_pid = servers[0].name.split("-")[1]
    assert len(client_pids) == CLIENTS and server_pid not in client_pids  # own processes
    expected = [sum(parts) for parts in zip(*(_arrays(p) for p in clients), strict=True)]
    unmasked = _arrays(servers[0])
    assert len(unmasked) == len(expected)
    for got, want in zip(unmasked, expected, strict=True):
        np.testing.assert_array_equal(got, want)  # exact: every mask cancelled
    lineage = summary["lineage"]
    assert isinstance(lineage, dict) and lineage["secagg"]["enabled"] is True

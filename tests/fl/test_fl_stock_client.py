"""A stock Flower ``NumPyClient`` (``simulations.stock_client``, written from Flower's
documentation, no fedfleet code) as the ClientApp of three SuperNodes, against the hub's TLS
SuperLink and ServerApp: a plain FedAvg run trains; a SecAgg+ run, where the stock client
masks with Flower's own generator, fails clearly (the hub's sanity check of the unmasked
aggregate) and stores no candidate, instead of saving a model of noise or hanging.

The SuperNodes are the agent's (pinned to the stock client's FAB, fast polling): Flower
1.41's stock ``flower-supernode`` fails its own ClientApp task-token check on this kind of
machine, which would test Flower, not the hub.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from cloud_hub.errors import TrainingError
from cloud_hub.fl.superlink import SuperLinkProcess, wait_for_summary
from shared.data import generate_sensor_data
from simulations.harness.federation import local_federation
from simulations.stock_client import FAB_PLAIN, FAB_SECAGG

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CLIENTS = 3


def _train_toml(path: Path, *, secagg: bool) -> Path:
    path.write_text(
        f'[training]\nmodel_name = "sensor-mlp"\nnum_clients = {CLIENTS}\n'
        f"min_fit_clients = {CLIENTS}\nnum_rounds = 2\nlocal_epochs = 1\n"
        f"[training.secagg]\nenabled = {'true' if secagg else 'false'}\n"
        "reconstruction_threshold = 2\n"
    )
    return path


@contextmanager
def stock_federation(root: Path, fab: Path) -> Iterator[SuperLinkProcess]:
    """The hub's TLS SuperLink and three SuperNodes that run the stock client's ``fab`` (the
    node config our ClientApp reads is ignored by the stock client)."""
    for i in range(CLIENTS):
        x, y = generate_sensor_data(80, seed=3, sample_seed=10 + i)
        np.savez(root / f"device-{i}.npz", x=x, y=y)
    x, y = generate_sensor_data(300, seed=3, sample_seed=99)
    np.savez(root / "validation.npz", x=x, y=y)
    with local_federation(root, devices=CLIENTS, run_id="stock", fab_dir=fab).running() as link:
        yield link


def _submit(root: Path, link: SuperLinkProcess, name: str, fab: Path, *, secagg: bool) -> Path:
    results = root / name
    link.submit_run(
        {
            "config-path": str(_train_toml(root / f"{name}.toml", secagg=secagg)),
            "validation-path": str(root / "validation.npz"),
            "results-dir": str(results),
            "model-store": str(root / f"{name}-models"),
            "run-name": name,
        },
        fab_dir=fab,
    )
    return results


@pytest.mark.timeout(300)
def test_a_stock_flower_client_joins_a_plain_fedavg_run(tmp_path: Path) -> None:
    root = tmp_path
    with stock_federation(root, FAB_PLAIN) as link:
        results = _submit(root, link, "plain", FAB_PLAIN, secagg=False)
        summary = wait_for_summary(results, timeout_s=240, link=link)
    rounds = summary["rounds"]
    assert [r["status"] for r in rounds] == ["ok", "ok", "ok"]
    assert [r["clients"] for r in rounds[1:]] == [CLIENTS, CLIENTS]
    assert rounds[-1]["accuracy"] > rounds[0]["accuracy"]  # the stock clients trained it
    assert summary["lineage"]["secagg"]["enabled"] is False
    assert summary["lineage"]["secagg"]["mask_generator"] is None
    assert any((root / "plain-models").rglob("*"))  # a candidate was stored


@pytest.mark.timeout(300)
def test_a_stock_secagg_client_fails_the_run_clearly_and_stores_nothing(tmp_path: Path) -> None:
    root = tmp_path
    with stock_federation(root, FAB_SECAGG) as link:
        results = _submit(root, link, "secagg", FAB_SECAGG, secagg=True)
        with pytest.raises(TrainingError) as failed:
            wait_for_summary(results, timeout_s=240, link=link)
    message = str(failed.value)
    assert "aggregate failed the sanity check: masks did not cancel?" in message
    assert "mask generator chacha20-hkdf-sha256" in message
    assert f"{CLIENTS} x unreported" in message  # no client said which generator it ran
    assert not any((root / "secagg-models").rglob("*.pt")), "a candidate of noise was stored"
    assert not any((root / "secagg-models").rglob("*"))

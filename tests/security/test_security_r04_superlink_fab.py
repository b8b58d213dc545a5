"""R4 against a real SuperLink (TLS from the hub CA) and a real pinned SuperNode.

Attacks: the SuperLink sends a FAB other than the one the signed order names (code that
would run on the device next to its samples); the run turns SecAgg+ off for a device that
requires it. Both are refused on the device: the FAB is never installed or run, no update
leaves the device, and the reason is in the SuperNode's log and reaches the hub's round."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from cloud_hub.errors import TrainingError
from cloud_hub.fl.superlink import (
    FAB_DIR,
    SuperLinkConfig,
    SuperLinkProcess,
    fab_sha256,
    issue_superlink_tls,
)
from edge_agent.fl.supernode import SuperNodeConfig, SuperNodeSupervisor
from shared.data import generate_sensor_data
from shared.fl.config_keys import NodeConfigKey
from shared.net import free_port
from tests.security._support_training import write_ca

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

RUN = "r04-run"


class Hub:
    """A SuperLink with a server certificate from the hub CA, and one device's SuperNode."""

    def __init__(self, root: Path) -> None:
        self.root = root
        _, self.ca = write_ca(root / "ca")
        cert, key, ca = issue_superlink_tls(root / "ca", "127.0.0.1", root / "tls")
        self.port = free_port()
        self.link = SuperLinkProcess(
            SuperLinkConfig(
                database=root / "superlink.db",
                port=self.port,
                ssl_certfile=cert,
                ssl_keyfile=key,
                ssl_ca_certfile=ca,
            ),
            workdir=root / "link",
        )
        x, y = generate_sensor_data(60, seed=3, sample_seed=10)
        np.savez(root / "device.npz", x=x, y=y)
        x, y = generate_sensor_data(100, seed=3, sample_seed=99)
        np.savez(root / "validation.npz", x=x, y=y)
        (root / "train.toml").write_text(
            '[training]\nmodel_name = "sensor-mlp"\nnum_clients = 1\nmin_fit_clients = 1\n'
            "num_rounds = 1\n[training.secagg]\nenabled = false\n"
        )
        self.node_log = root / "supernode.log"

    def supernode(self, *, fab: str, require_secagg: bool) -> SuperNodeSupervisor:
        """The SuperNode a device starts for a signed order (TLS, pinned FAB, order's run)."""
        return SuperNodeSupervisor(
            SuperNodeConfig(
                superlink=f"127.0.0.1:{self.port}",
                data_path=self.root / "device.npz",
                clientappio_port=free_port(),
                root_certificates=self.ca,
                fab_sha256=fab,
                extra_node_config={
                    NodeConfigKey.ORDER_RUN_ID: RUN,
                    NodeConfigKey.REQUIRE_SECURE_AGGREGATION: require_secagg,
                },
            ),
            log_path=self.node_log,
        )

    def run(self, node: SuperNodeSupervisor, fab_dir: Path, *, secagg: bool) -> dict:
        """Submit ``fab_dir`` and wait for the ServerApp's summary (nodes answered)."""
        node.start()
        try:
            self.link.submit_run(
                {
                    "config-path": str(self.root / "train.toml"),
                    "validation-path": str(self.root / "validation.npz"),
                    "results-dir": str(self.root / "results"),
                    "run-name": RUN,
                    "model-name": "sensor-mlp",
                    "secure-aggregation": secagg,
                },
                fab_dir=fab_dir,
            )
            summary = self.root / "results" / "summary.json"
            deadline = time.monotonic() + 240
            while not summary.exists() and time.monotonic() < deadline:
                time.sleep(0.5)
            assert summary.exists(), self.node_log.read_text(errors="replace")[-3000:]
            return dict(json.loads(summary.read_text()))
        finally:
            node.stop()


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[Hub]:
    h = Hub(tmp_path)
    h.link.start()
    try:
        yield h
    finally:
        h.link.stop()


def _evil_fab(tmp_path: Path, marker: Path) -> Path:
    """fedfleet's FAB with a ClientApp module that runs attacker code when imported."""
    evil = tmp_path / "evil-fab"
    shutil.copytree(FAB_DIR, evil, ignore=shutil.ignore_patterns("__pycache__"))
    (evil / "evil_client.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).write_text('attacker code ran')\n"
        "from edge_agent.fl.client_app import app as ordered_app\n"
        "app = ordered_app\n"
    )
    manifest = evil / "pyproject.toml"
    ordered_client = 'clientapp = "edge_agent.fl.client_app:app"'
    assert ordered_client in manifest.read_text()
    manifest.write_text(
        manifest.read_text().replace(ordered_client, 'clientapp = "evil_client:app"')
    )
    return evil


def test_a_fab_other_than_the_ordered_one_is_never_run(hub: Hub, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    evil = _evil_fab(tmp_path, marker)
    evil_hash, ordered = fab_sha256(evil), fab_sha256()
    assert evil_hash != ordered
    samples_before = (tmp_path / "device.npz").read_bytes()

    summary = hub.run(hub.supernode(fab=ordered, require_secagg=False), evil, secagg=False)

    assert not marker.exists(), "the attacker's ClientApp ran on the device"
    log = hub.node_log.read_text(errors="replace")
    assert f"R4: FAB {evil_hash} refused" in log and ordered in log
    assert "FAB verification failed" in log  # Flower's own refusal: an error reply, not a crash
    assert summary["status"] == "failed"  # the hub's round fails loudly: no update arrived
    assert "no client update was aggregated" in summary["error"]
    assert (tmp_path / "device.npz").read_bytes() == samples_before
    # the hub notices too: a FAB other than the one its orders name is an error at submission
    with pytest.raises(TrainingError, match="the orders name"):
        hub.link.submit_run({"run-name": "x"}, fab_dir=evil, expected_fab_sha256=ordered)


def test_a_round_without_secagg_is_refused_where_the_order_requires_it(hub: Hub) -> None:
    summary = hub.run(hub.supernode(fab=fab_sha256(), require_secagg=True), FAB_DIR, secagg=False)

    log = hub.node_log.read_text(errors="replace")
    assert f"(FAB {fab_sha256()}) ran in this process" in log  # the ordered FAB ran (TLS) ...
    assert "RoundRefusedError: R4: SecAgg+ is required here and the run turned it off" in log
    assert "TLS disabled" not in hub.link.log_tail(50_000)
    assert summary["status"] == "failed"  # ... but no unmasked update was sent
    assert "no client update was aggregated" in summary["error"]

"""The agent's TrainCommand handler: on a signed training order it exports its labelled
samples and starts a real ``flower-supernode`` (TLS against the pinned hub CA, pinned to the
order's FAB), stops it on the signed stop; refuses what the device does not allow."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge_agent.fl.train_command import OrderTrust, TrainCommandHandler, TrainingLimits
from shared.net import free_port
from tests.security._support_training import OrderIssuer, write_ca


def _samples(n: int):  # type: ignore[no-untyped-def]
    def load(limit: int) -> tuple[np.ndarray, np.ndarray]:
        k = min(n, limit)
        return np.ones((k, 12), np.float32), np.zeros(k, np.int64)

    return load


@pytest.fixture
def hub(tmp_path: Path) -> OrderIssuer:
    return OrderIssuer(tmp_path / "keys")


def _handler(tmp_path: Path, hub: OrderIssuer, limits: TrainingLimits, samples: int = 50):  # type: ignore[no-untyped-def]
    return TrainCommandHandler(
        state_dir=tmp_path / "state",
        load_samples=_samples(samples),
        trust=OrderTrust(device_id="dev-1", trust=hub.keys.trust_root()),
        limits=limits,
    )


def test_train_command_starts_and_stops_a_supernode(tmp_path: Path, hub: OrderIssuer) -> None:
    _, ca = write_ca(tmp_path / "ca")
    handler = _handler(tmp_path, hub, TrainingLimits(root_certificates=ca))
    order = hub.order("dev-1", superlink=f"127.0.0.1:{free_port()}")
    handler(hub.command(order, config={"max_samples": 30, "duration_s": 60}))
    try:
        assert handler.supervisor is not None and handler.supervisor.is_running()
        with np.load(tmp_path / "state" / "fl" / "train.npz") as data:
            assert data["x"].shape == (30, 12)
        argv = handler.supervisor.config.argv()
        assert "--insecure" not in argv and argv[argv.index("--root-certificates") + 1] == str(ca)
        assert argv[argv.index("--fab-sha256") + 1] == order.fab_sha256
        assert 'order-run-id="run-1"' in argv[argv.index("--node-config") + 1]
    finally:
        supervisor = handler.supervisor
        handler(hub.command(order, config={"stop": True}))
    assert handler.supervisor is None and supervisor is not None
    assert not supervisor.is_running()
    assert handler.refusals == []


@pytest.mark.parametrize(
    ("limits", "samples", "insecure"),
    [
        (TrainingLimits(), 50, True),  # plain text not allowed by the device
        (TrainingLimits(), 50, False),  # TLS, but no hub CA pinned to verify it
        (TrainingLimits(allow_insecure=True, min_samples=20), 5, True),  # too few samples
    ],
)
def test_train_command_refusals_start_nothing(
    tmp_path: Path, hub: OrderIssuer, limits: TrainingLimits, samples: int, insecure: bool
) -> None:
    handler = _handler(tmp_path, hub, limits, samples)
    handler(hub.command(hub.order("dev-1", insecure=insecure)))  # never raises
    assert handler.supervisor is None and len(handler.refusals) == 1
    assert not (tmp_path / "state" / "fl" / "supernode.log").exists()

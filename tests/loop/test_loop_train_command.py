"""The agent's TrainCommand handler: exports its labelled samples, starts a real
``flower-supernode`` for the hub's SuperLink, stops it on request; refuses what the device
does not allow."""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import pytest

from edge_agent.fl.train_command import TrainCommandHandler, TrainingLimits
from shared.messages import TrainCommand, new_id


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cmd(**config: object) -> TrainCommand:
    return TrainCommand(
        command_id=new_id(),
        run_id="rt-1",
        superlink=f"127.0.0.1:{_port()}",
        model_name="sensor-mlp",
        config=dict(config),
    )


def _samples(n: int):  # type: ignore[no-untyped-def]
    def load(limit: int) -> tuple[np.ndarray, np.ndarray]:
        k = min(n, limit)
        return np.ones((k, 12), np.float32), np.zeros(k, np.int64)

    return load


def test_train_command_starts_and_stops_a_supernode(tmp_path: Path) -> None:
    handler = TrainCommandHandler(
        state_dir=tmp_path, load_samples=_samples(50), limits=TrainingLimits(allow_insecure=True)
    )
    handler(_cmd(insecure=True, max_samples=30, duration_s=60))
    try:
        assert handler.supervisor is not None and handler.supervisor.is_running()
        with np.load(tmp_path / "fl" / "train.npz") as data:
            assert data["x"].shape == (30, 12)
        argv = handler.supervisor.config.argv()
        assert "--insecure" in argv and str(tmp_path / "fl" / "train.npz") in " ".join(argv)
    finally:
        supervisor = handler.supervisor
        handler(_cmd(stop=True))
    assert handler.supervisor is None and supervisor is not None
    assert not supervisor.is_running()


@pytest.mark.parametrize(
    ("limits", "samples", "config"),
    [
        (TrainingLimits(), 50, {"insecure": True}),  # plain text not allowed by the device
        (TrainingLimits(allow_insecure=True, min_samples=20), 5, {"insecure": True}),
    ],
)
def test_train_command_refusals_start_nothing(
    tmp_path: Path, limits: TrainingLimits, samples: int, config: dict[str, object]
) -> None:
    handler = TrainCommandHandler(state_dir=tmp_path, load_samples=_samples(samples), limits=limits)
    handler(_cmd(**config))  # never raises: the agent's worker keeps going
    assert handler.supervisor is None
    assert not (tmp_path / "fl" / "supernode.log").exists()

"""The agent's answer to a ``TrainCommand``: join the hub's Flower run with a SuperNode.

On a command the device exports the labelled part of its sample store to an ``.npz`` under
its state directory (the SuperNode's ClientApp reads ``data-path``; raw samples never leave
the device — only masked model updates do), then starts a supervised ``flower-supernode``
connected to ``command.superlink``. The SuperNode is stopped when ``config["duration_s"]``
has passed (default 600 s), when a new command replaces it, on ``config["stop"] = true``,
or when the agent stops.

Command ``config`` keys (all optional): ``insecure`` (bool, plain-text SuperLink; needs the
device config to allow it), ``duration_s``, ``max_samples``, ``stop``. The device's own
limits (``TrainingLimits``) cap the local work whatever the hub asks.

Hooked in with ``agent.add_command_handler(TrainCommand, TrainCommandHandler(...))``.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge_agent.errors import AgentConfigError
from edge_agent.fl.supernode import SuperNodeConfig, SuperNodeSupervisor
from shared.messages import TrainCommand

__all__ = ["TrainCommandHandler", "TrainingLimits"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainingLimits:
    """What this device allows a training run (the hub cannot raise these)."""

    allow_insecure: bool = False  # accept plain-text SuperLinks (loopback demos, tests)
    root_certificates: Path | None = None  # CA of the hub's SuperLink (TLS)
    max_samples: int = 5000
    min_samples: int = 10
    max_duration_s: float = 3600.0
    batch_size: int = 32
    max_local_epochs: int = 2
    time_budget_s: float = 60.0

    def __post_init__(self) -> None:
        if not 1 <= self.min_samples <= self.max_samples <= 10_000_000:
            raise AgentConfigError("need 1 <= min_samples <= max_samples")
        if not 0 < self.max_duration_s <= 86_400:
            raise AgentConfigError("max_duration_s must be in (0, 86400]")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class TrainCommandHandler:
    """Callable for ``EdgeAgent.add_command_handler(TrainCommand, ...)``; never raises."""

    def __init__(
        self,
        *,
        state_dir: Path,
        load_samples: Callable[[int], tuple[np.ndarray, np.ndarray]],
        limits: TrainingLimits | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.state_dir = Path(state_dir)
        self.load_samples = load_samples
        self.limits = limits or TrainingLimits()
        self.clock = clock
        self.supervisor: SuperNodeSupervisor | None = None
        self.run_id: str | None = None
        self._deadline = 0.0
        self._lock = threading.Lock()
        self._timer: threading.Timer | None = None

    def __call__(self, command: TrainCommand) -> None:
        try:
            self.handle(command)
        except Exception as exc:  # a bad command must not stop the agent's worker
            log.warning("train command %s refused: %s", command.command_id, exc)

    def handle(self, command: TrainCommand) -> None:
        cfg: dict[str, Any] = dict(command.config)
        self.stop()
        if cfg.get("stop"):
            log.info("training run %s: stopped by the hub", command.run_id)
            return
        insecure = bool(cfg.get("insecure", False))
        if insecure and not self.limits.allow_insecure:
            raise AgentConfigError("the hub asked for a plain-text SuperLink; not allowed here")
        limit = min(int(cfg.get("max_samples", self.limits.max_samples)), self.limits.max_samples)
        x, y = self.load_samples(limit)
        if len(y) < self.limits.min_samples:
            raise AgentConfigError(f"only {len(y)} labelled samples (< {self.limits.min_samples})")
        work = self.state_dir / "fl"
        work.mkdir(parents=True, exist_ok=True)
        data_path = work / "train.npz"
        tmp = work / "train.tmp.npz"
        np.savez(tmp, x=x, y=y)
        tmp.replace(data_path)
        duration = min(float(cfg.get("duration_s", 600.0)), self.limits.max_duration_s)
        supervisor = SuperNodeSupervisor(
            SuperNodeConfig(
                superlink=command.superlink,
                data_path=data_path,
                clientappio_port=_free_port(),
                insecure=insecure,
                root_certificates=None if insecure else self.limits.root_certificates,
                batch_size=self.limits.batch_size,
                max_local_epochs=self.limits.max_local_epochs,
                time_budget_s=self.limits.time_budget_s,
            ),
            log_path=work / "supernode.log",
        )
        supervisor.start()
        with self._lock:
            self.supervisor, self.run_id = supervisor, command.run_id
            self._timer = threading.Timer(duration, self.stop)
            self._timer.daemon = True
            self._timer.start()
        log.info(
            "training run %s: SuperNode for %s with %d samples, up to %.0fs",
            command.run_id,
            command.superlink,
            len(y),
            duration,
        )

    def stop(self) -> None:
        with self._lock:
            supervisor, self.supervisor = self.supervisor, None
            timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()
        if supervisor is not None:
            supervisor.stop()

"""Per-round metrics of a run, collected on the hub while the ServerApp runs."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from numpy.typing import NDArray

__all__ = ["RoundMetrics", "RunRecorder"]


@dataclass(frozen=True)
class RoundMetrics:
    """One round as the hub saw it (round 0 = the initial model)."""

    round: int
    accuracy: float
    loss: float
    fit_time_s: float
    elapsed_s: float
    status: str = "ok"  # "ok" | "failed" (the global model was kept)
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class RunRecorder:
    """Thread-safe sink for round results; keeps the latest global weights."""

    def __init__(self, on_round: Callable[[RoundMetrics], None] | None = None) -> None:
        self._lock = threading.Lock()
        self._on_round = on_round
        self._started = time.monotonic()
        self._fit_times: dict[int, float] = {}
        self._failures: dict[int, str] = {}
        self.rounds: list[RoundMetrics] = []
        self.global_weights: list[NDArray] | None = None
        self.global_round: int = -1

    def fit_finished(self, server_round: int, duration_s: float, failure: str | None) -> None:
        with self._lock:
            self._fit_times[server_round] = duration_s
            if failure:
                self._failures[server_round] = failure

    def evaluated(
        self, server_round: int, weights: list[NDArray], loss: float, accuracy: float
    ) -> None:
        with self._lock:
            failure = self._failures.get(server_round, "")
            metrics = RoundMetrics(
                round=server_round,
                accuracy=accuracy,
                loss=loss,
                fit_time_s=self._fit_times.get(server_round, 0.0),
                elapsed_s=time.monotonic() - self._started,
                status="failed" if failure else "ok",
                detail=failure,
            )
            self.rounds.append(metrics)
            if not failure:
                self.global_weights = [w.copy() for w in weights]
                self.global_round = server_round
        if self._on_round is not None:
            self._on_round(metrics)

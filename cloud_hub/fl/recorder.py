"""Per-round metrics of a run, collected on the hub while the ServerApp runs."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from numpy.typing import NDArray

from cloud_hub.errors import TrainingError

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
    clients: int = 0  # clients whose update was aggregated
    train_loss: float = float("nan")  # example-weighted mean of the clients' local loss
    stopped_by_budget: int = 0  # clients that hit their time budget

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
        self._fit_metrics: dict[str, float] = {}
        self.rounds: list[RoundMetrics] = []
        self.global_weights: list[NDArray] | None = None
        self.global_round: int = -1
        self._unmasked_with: set[str] = set()
        self._client_generators: set[str] = set()

    def secure_round(self, generator: str, client_reports: dict[str, int]) -> None:
        """A SecAgg+ round is unmasked with ``generator``; the clients reported theirs."""
        with self._lock:
            self._unmasked_with.add(generator)
            self._client_generators.update(client_reports)

    def mask_generators(self) -> tuple[str | None, list[str]]:
        """What ran: the generator the hub unmasked with (``None``: no SecAgg+ round; names
        joined by "+" if rounds differed) and the sorted names the clients reported."""
        with self._lock:
            unmasked = "+".join(sorted(self._unmasked_with)) or None
            return unmasked, sorted(self._client_generators)

    def final_model(self, run_id: str, num_rounds: int, on_round_failure: str) -> list[NDArray]:
        """The run's trained model; ``TrainingError`` if the run has none to offer.

        No round succeeded (the global model is still the initial one), or, under the
        "abort" policy, the run stopped before its last round: nothing is a candidate."""
        if self.global_weights is None or self.global_round < 1:
            raise TrainingError(
                f"federated run {run_id}: no round succeeded, the model was not trained "
                f"(rounds: {[r.status for r in self.rounds[1:]]})"
            )
        if self.global_round < num_rounds and on_round_failure == "abort":
            raise TrainingError(
                f"federated run {run_id} ended after round {self.global_round} of {num_rounds}"
            )
        return self.global_weights

    def fit_finished(self, server_round: int, duration_s: float, failure: str | None) -> None:
        with self._lock:
            self._fit_times[server_round] = duration_s
            if failure:
                self._failures[server_round] = failure

    def aggregate_fit_metrics(self, results: list[tuple[int, dict[str, Any]]]) -> dict[str, Any]:
        """Flower ``fit_metrics_aggregation_fn``: the clients' reports of the current round."""
        total = sum(n for n, _ in results)
        loss = (
            sum(n * float(m.get("train_loss", 0.0)) for n, m in results) / total
            if total
            else float("nan")
        )
        merged = {
            "clients": len(results),
            "train_loss": loss,
            "stopped_by_budget": sum(int(m.get("stopped_by_budget", 0)) for _, m in results),
        }
        with self._lock:
            self._fit_metrics = dict(merged)
        return merged

    def aggregated_clients(self) -> int:
        """How many clients' updates the current round aggregated (0: none arrived)."""
        with self._lock:
            return int(self._fit_metrics.get("clients", 0))

    def evaluated(
        self, server_round: int, weights: list[NDArray], loss: float, accuracy: float
    ) -> None:
        with self._lock:
            failure = self._failures.get(server_round, "")
            fit = self._fit_metrics if server_round > 0 and not failure else {}
            self._fit_metrics = {}
            metrics = RoundMetrics(
                round=server_round,
                accuracy=accuracy,
                loss=loss,
                fit_time_s=self._fit_times.get(server_round, 0.0),
                elapsed_s=time.monotonic() - self._started,
                status="failed" if failure else "ok",
                detail=failure,
                clients=int(fit.get("clients", 0)),
                train_loss=float(fit.get("train_loss", float("nan"))),
                stopped_by_budget=int(fit.get("stopped_by_budget", 0)),
            )
            self.rounds.append(metrics)
            if not failure:
                self.global_weights = [w.copy() for w in weights]
                self.global_round = server_round
        if self._on_round is not None:
            self._on_round(metrics)

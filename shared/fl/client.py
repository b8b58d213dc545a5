"""The federated client: Flower ``NumPyClient`` + ``ClientApp`` with SecAgg+ (imports torch).

The edge agent (one device, one SuperNode) and the hub's simulations (many virtual clients)
build their ClientApp here, so a simulated client and a real device train identically.

- :class:`LocalTrainingClient` trains the registered model on a :class:`LocalDataSource`
  within the device's :class:`LocalTrainingLimits`; it reports counts and losses, never data.
- SecAgg+ (hardened) and fault injection are client mods from :mod:`shared.fl.mods`.
- :class:`ClientAppSpec` is a small picklable description from which every process (the
  Simulation Engine's workers, a SuperNode's ClientApp process) rebuilds the same app.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from flwr.app import Context
from flwr.client import NumPyClient
from flwr.clientapp import ClientApp
from numpy.typing import NDArray

from shared.fl.config_keys import FitConfigKey, NodeConfigKey
from shared.fl.data_source import DataResolver, LocalDataSource
from shared.fl.mods import DropoutSchedule, compose_client_app
from shared.fl.training import (
    LocalTrainingLimits,
    evaluate_model,
    get_weights,
    set_weights,
    train_model,
)

__all__ = ["ClientAppSpec", "LocalTrainingClient", "build_client_app"]


class LocalTrainingClient(NumPyClient):
    """Trains the registered model ``model_name`` on one client's local samples."""

    def __init__(
        self,
        model_name: str,
        source: LocalDataSource,
        limits: LocalTrainingLimits,
        *,
        seed: int = 0,
    ) -> None:
        from shared.models import build_model

        self.model = build_model(model_name, seed=seed)
        self.source = source
        self.limits = limits
        self.seed = seed

    def _limits_for(self, config: dict[str, Any]) -> LocalTrainingLimits:
        # The hub asks; the device caps: never more epochs/batch than the device allows.
        epochs = min(
            int(config.get(FitConfigKey.LOCAL_EPOCHS, self.limits.max_local_epochs)),
            self.limits.max_local_epochs,
        )
        batch = min(
            int(config.get(FitConfigKey.BATCH_SIZE, self.limits.batch_size)), self.limits.batch_size
        )
        lr = float(config.get(FitConfigKey.LEARNING_RATE, self.limits.learning_rate))
        return LocalTrainingLimits(
            batch_size=max(batch, 1),
            max_local_epochs=max(epochs, 1),
            time_budget_s=self.limits.time_budget_s,
            learning_rate=lr,
            max_samples=self.limits.max_samples,
        )

    def get_parameters(self, config: dict[str, Any]) -> list[NDArray]:
        return get_weights(self.model)

    def fit(
        self, parameters: list[NDArray], config: dict[str, Any]
    ) -> tuple[list[NDArray], int, dict[str, Any]]:
        set_weights(self.model, parameters)
        x, y = self.source.load()
        report = train_model(
            self.model,
            x,
            y,
            self._limits_for(config),
            proximal_mu=float(config.get("proximal_mu", 0.0)),
            seed=self.seed + int(config.get("server-round", 0)),
        )
        metrics = {
            "train_loss": report.train_loss,
            "epochs": report.epochs_done,
            "duration_s": report.duration_s,
            "stopped_by_budget": int(report.stopped_by_budget),
        }
        return get_weights(self.model), report.num_examples, metrics

    def evaluate(
        self, parameters: list[NDArray], config: dict[str, Any]
    ) -> tuple[float, int, dict[str, Any]]:
        set_weights(self.model, parameters)
        x, y = self.source.load()
        loss, accuracy = evaluate_model(self.model, x, y)
        return loss, len(y), {"accuracy": accuracy}


@dataclass(frozen=True)
class ClientAppSpec:
    """Everything needed to rebuild the client in any process (keep it small to pickle)."""

    model_name: str
    data: DataResolver
    limits: LocalTrainingLimits = field(default_factory=LocalTrainingLimits)
    secure_aggregation: bool = True
    central_dp_clipping: bool = False  # pairs with the hub's client-side-clipping DP wrapper
    dropout: DropoutSchedule | None = None
    torch_threads: int | None = 1
    seed: int = 0

    def client_fn(self, context: Context) -> Any:
        if self.torch_threads is not None:
            import torch

            torch.set_num_threads(self.torch_threads)
        partition = context.node_config.get(NodeConfigKey.PARTITION_ID, 0)
        seed = self.seed * 100_003 + int(partition) if isinstance(partition, int) else self.seed
        return LocalTrainingClient(
            self.model_name, self.data(context), self.limits, seed=seed
        ).to_client()


def build_client_app(spec: ClientAppSpec) -> ClientApp:
    """The Flower ``ClientApp`` for ``spec`` (mod order: :func:`shared.fl.mods.client_mods`)."""
    return compose_client_app(
        spec.client_fn,
        dropout=spec.dropout,
        secure_aggregation=spec.secure_aggregation,
        dp_clipping=spec.central_dp_clipping,
    )

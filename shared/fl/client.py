"""The federated client: Flower ``NumPyClient`` + ``ClientApp`` with SecAgg+ (imports torch).

The edge agent (one device, one SuperNode) and the hub's simulations (many virtual clients)
build their ClientApp here, so a simulated client and a real device train identically.

- :class:`LocalTrainingClient` trains the registered model on a :class:`LocalDataSource`
  within the device's :class:`LocalTrainingLimits`; it reports counts and losses, never data.
- :func:`hardened_secaggplus_mod` is Flower's ``secaggplus_mod`` run inside
  :func:`shared.fl.secure_prg.secure_mask_generator` (masks from ChaCha20, see there).
- :class:`DropoutSchedule` makes chosen clients fail at a chosen SecAgg+ stage (simulated
  device loss, for fault scenarios and tests).
- :class:`ClientAppSpec` is a small picklable description from which every process (the
  Simulation Engine's workers, a SuperNode's ClientApp process) rebuilds the same app.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


from flwr.app import Context, Message
from flwr.client import NumPyClient
from flwr.client.mod import fixedclipping_mod, secaggplus_mod
from flwr.clientapp import ClientApp
from flwr.clientapp.typing import ClientAppCallable, Mod
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key
from numpy.typing import NDArray

from shared.errors import ConfigError
from shared.fl.data_source import LocalDataSource, PartitionDirectory
from shared.fl.secure_prg import secure_mask_generator
from shared.fl.training import (
    LocalTrainingLimits,
    evaluate_model,
    get_weights,
    set_weights,
    train_model,
)

__all__ = [
    "ClientAppSpec",
    "DataResolver",
    "DropoutSchedule",
    "InMemoryPartitions",
    "LocalTrainingClient",
    "NodeConfigDataPath",
    "PartitionFiles",
    "SimulatedDropoutError",
    "build_client_app",
    "hardened_secaggplus_mod",
]

# Fit-config keys the hub may send; the client caps them by its own limits.
FIT_KEY_EPOCHS = "local-epochs"
FIT_KEY_BATCH = "batch-size"
FIT_KEY_LR = "learning-rate"

DataResolver = Callable[[Context], LocalDataSource]
"""Finds the client's data from its Flower ``Context`` (node config / partition id)."""


def _partition_id(context: Context) -> int:
    try:
        return int(context.node_config["partition-id"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError("node config has no integer 'partition-id'") from exc


@dataclass(frozen=True)
class PartitionFiles:
    """Data of simulated client ``partition-id`` from a :class:`PartitionDirectory`."""

    directory: PartitionDirectory

    def __call__(self, context: Context) -> LocalDataSource:
        return self.directory.source(_partition_id(context))


@dataclass(frozen=True, eq=False)
class InMemoryPartitions:
    """Data of simulated client ``partition-id`` from a list held in memory (in-process runs)."""

    sources: tuple[LocalDataSource, ...]

    def __call__(self, context: Context) -> LocalDataSource:
        index = _partition_id(context)
        if not 0 <= index < len(self.sources):
            raise ConfigError(f"partition-id {index} out of range [0, {len(self.sources)})")
        return self.sources[index]


@dataclass(frozen=True)
class NodeConfigDataPath:
    """A SuperNode's data: the ``.npz`` named by its node config key ``data-path``."""

    key: str = "data-path"

    def __call__(self, context: Context) -> LocalDataSource:
        from shared.fl.data_source import NpzDataSource
        from pathlib import Path

        value = context.node_config.get(self.key)
        if not isinstance(value, str) or not value:
            raise ConfigError(f"node config has no {self.key!r}")
        return NpzDataSource(Path(value))


class SimulatedDropoutError(RuntimeError):
    """Raised inside a ClientApp to simulate a device that disappears mid-round."""


@dataclass(frozen=True)
class DropoutSchedule:
    """Which clients vanish, and when (fault injection for simulations and tests).

    A client drops in a round when its partition id is listed in ``partitions`` or, for
    the others, with probability ``rate`` (decided by a hash of seed, round and partition,
    so runs are reproducible and all processes agree). ``stage`` is the SecAgg+ stage at
    which it stops answering (``"collect_masked_vectors"``: after sharing its keys — the
    case where the server must reconstruct its masks); plain rounds drop at training.
    """

    rate: float = 0.0
    seed: int = 0
    stage: str = "collect_masked_vectors"
    partitions: tuple[int, ...] = ()
    rounds: tuple[int, ...] = ()  # empty: every round

    def __post_init__(self) -> None:
        if not 0.0 <= self.rate < 1.0:
            raise ConfigError(f"dropout rate must be in [0, 1), got {self.rate}")
        stages = ("setup", "share_keys", "collect_masked_vectors", "unmask")
        if self.stage not in stages:
            raise ConfigError(f"dropout stage must be one of {stages}, got {self.stage!r}")

    def drops(self, server_round: int, partition_id: int) -> bool:
        if self.rounds and server_round not in self.rounds:
            return False
        if partition_id in self.partitions:
            return True
        if self.rate <= 0:
            return False
        digest = hashlib.sha256(f"{self.seed}/{server_round}/{partition_id}".encode()).digest()
        return int.from_bytes(digest[:8], "little") / 2**64 < self.rate

    def mod(self, message: Message, context: Context, call_next: ClientAppCallable) -> Message:
        """A Flower ``Mod`` raising :class:`SimulatedDropoutError` when this client drops."""
        if message.metadata.message_type == "train" and "partition-id" in context.node_config:
            configs = message.content.config_records.get(RECORD_KEY_CONFIGS)
            stage = str(configs[Key.STAGE]) if configs is not None else self.stage
            server_round = int(message.metadata.group_id or 0)
            if stage == self.stage and self.drops(server_round, _partition_id(context)):
                raise SimulatedDropoutError(
                    f"partition {_partition_id(context)} dropped at {stage}, round {server_round}"
                )
        return call_next(message, context)


def hardened_secaggplus_mod(
    message: Message, context: Context, call_next: ClientAppCallable
) -> Message:
    """Flower's ``secaggplus_mod`` with masks from fedfleet's cryptographic generator."""
    with secure_mask_generator():
        return secaggplus_mod(message, context, call_next)


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
        epochs = min(int(config.get(FIT_KEY_EPOCHS, self.limits.max_local_epochs)), self.limits.max_local_epochs)
        batch = min(int(config.get(FIT_KEY_BATCH, self.limits.batch_size)), self.limits.batch_size)
        lr = float(config.get(FIT_KEY_LR, self.limits.learning_rate))
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
        partition = context.node_config.get("partition-id", 0)
        seed = self.seed * 100_003 + int(partition) if isinstance(partition, int) else self.seed
        return LocalTrainingClient(self.model_name, self.data(context), self.limits, seed=seed).to_client()

    def mods(self) -> list[Mod]:
        # Order matters: the outermost mod comes first. Dropout fires before anything else;
        # SecAgg+ masks what the inner mods return; clipping must see only the fit message
        # (SecAgg+ only calls inward at its collect stage).
        mods: list[Mod] = []
        if self.dropout is not None:
            mods.append(self.dropout.mod)
        if self.secure_aggregation:
            mods.append(hardened_secaggplus_mod)
        if self.central_dp_clipping:
            mods.append(fixedclipping_mod)
        return mods


def build_client_app(spec: ClientAppSpec) -> ClientApp:
    """The Flower ``ClientApp`` for ``spec``."""
    return ClientApp(client_fn=spec.client_fn, mods=spec.mods())



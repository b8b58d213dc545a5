"""``run_buffered``: one asynchronous buffered run over in-process clients, end to end.

The counterpart of :func:`cloud_hub.fl.run.run_federated` for a class in ``async`` mode:
the same ClientApp training (:mod:`shared.fl.async_client`), buffers folded by
:class:`~cloud_hub.fl.async_run.AsyncBufferedRun` under SecAgg+, the hub's validation set
after every new version, the final version stored as the run's candidate with each
buffer's lineage (devices, base versions, staleness). Devices are ordered again as soon
as their update is folded, so the buffers of one run overlap as in the fleet.

With a ``gate`` (the hub's eligibility rules over the registry,
:class:`cloud_hub.fl.fleet_conditions.RegistryEligibility`), only the devices it finds
eligible get an order; each order round's verdict ("3 devices not eligible: 2 too hot,
1 serving") is in the result's ``eligibility``.
"""

from __future__ import annotations

import datetime as dt
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from cloud_hub.errors import HubConfigError, TrainingError
from cloud_hub.fl.async_run import AsyncBufferedRun, BufferRecord
from cloud_hub.fl.config import SecAggConfig
from cloud_hub.fl.eligibility import EligibilityReport
from cloud_hub.fl.fedbuff import FedBuffConfig
from cloud_hub.fl.model_store import ModelStore
from cloud_hub.fl.order_ledger import OrderLedger
from cloud_hub.fl.partition import data_fingerprint
from shared.fl import InMemoryPartitions, LocalDataSource

__all__ = ["BufferedRunConfig", "BufferedRunResult", "run_buffered"]

_MAX_BUFFERS = 10_000

#: asks which of the named devices may take an order now
OrderGate = Callable[[Sequence[str]], EligibilityReport]


@dataclass(frozen=True)
class BufferedRunConfig:
    """What one asynchronous run trains, and how many buffers it folds."""

    model_name: str
    fedbuff: FedBuffConfig = field(default_factory=FedBuffConfig)
    secagg: SecAggConfig = field(default_factory=SecAggConfig)
    buffers: int = 3
    local_epochs: int = 1
    batch_size: int = 32
    learning_rate: float = 0.05
    seed: int = 0

    def __post_init__(self) -> None:
        if not 1 <= self.buffers <= _MAX_BUFFERS:
            raise HubConfigError(f"buffers must be in [1, {_MAX_BUFFERS}], got {self.buffers}")
        if not self.secagg.enabled:
            raise HubConfigError("asynchronous runs always use SecAgg+ (secagg.enabled = true)")

    def lineage(self) -> dict[str, Any]:
        return {
            "mode": "async",
            "model": self.model_name,
            "buffer_size": self.fedbuff.buffer_size,
            "server_lr": self.fedbuff.server_lr,
            "max_staleness": self.fedbuff.max_staleness,
            "buffers": self.buffers,
            "secagg": True,
            "local_epochs": self.local_epochs,
        }


@dataclass(frozen=True)
class BufferedRunResult:
    run_id: str
    config: BufferedRunConfig
    buffers: tuple[BufferRecord, ...]
    versions: tuple[dict[str, Any], ...]  # accuracy and loss of every new version
    weights: list[NDArray] = field(repr=False)
    wall_s: float
    data_fingerprint: str
    device_names: Mapping[int, str] = field(default_factory=dict)
    eligibility: tuple[dict[str, Any], ...] = ()  # one verdict per order round (with a gate)

    def buffer_reports(self) -> list[dict[str, Any]]:
        """Every buffer's lineage, naming devices rather than grid nodes."""

        def name(node: int) -> str:
            return self.device_names.get(node, str(node))

        reports = []
        for buffer in self.buffers:
            report = buffer.to_dict()
            report["members"] = [name(n) for n in report["members"]]
            report["folded"] = [{**f, "device": name(f["device"])} for f in report["folded"]]
            reports.append(report)
        return reports

    def summary(self) -> dict[str, Any]:
        last = self.versions[-1] if self.versions else {}
        return {
            "run_id": self.run_id,
            "mode": "async",
            "final_accuracy": last.get("accuracy"),
            "final_loss": last.get("loss"),
            "wall_s": self.wall_s,
            "buffers": self.buffer_reports(),
            "versions": list(self.versions),
            "lineage": self.config.lineage(),
            "data_fingerprint": self.data_fingerprint,
            **({"eligibility": list(self.eligibility)} if self.eligibility else {}),
        }


def _evaluator(model_name: str, validation: tuple[NDArray, NDArray]) -> Any:
    from shared.fl.training import evaluate_model, set_weights
    from shared.models import build_model

    model = build_model(model_name)
    x, y = np.asarray(validation[0]), np.asarray(validation[1])

    def evaluate(weights: list[NDArray]) -> tuple[float, float]:
        set_weights(model, weights)
        return evaluate_model(model, x, y)

    return evaluate


def _order_eligible(
    run: AsyncBufferedRun,
    idle: Sequence[int],
    names: Mapping[int, str],
    gate: OrderGate | None,
    verdicts: list[dict[str, Any]],
) -> None:
    """Order the idle devices the gate finds eligible (all of them without a gate)."""
    if gate is None:
        run.order(idle, names=names)
        return
    if not idle:
        return
    report = gate([names[n] for n in idle])
    verdicts.append(report.to_dict())
    labelled = {v.device: v.labelled_samples for v in report.verdicts if v.eligible}
    chosen = [n for n in idle if names[n] in labelled]
    run.order(
        chosen,
        names=names,
        labelled={n: x for n in chosen if (x := labelled[names[n]]) is not None},
    )


def run_buffered(
    config: BufferedRunConfig,
    client_data: Sequence[LocalDataSource],
    validation: tuple[NDArray, NDArray],
    *,
    run_id: str,
    initial_state: Mapping[str, Any] | None = None,
    model_store: ModelStore | None = None,
    device_names: Sequence[str] | None = None,
    gate: OrderGate | None = None,
    ledger: OrderLedger | None = None,
) -> BufferedRunResult:
    """Fold ``config.buffers`` secure buffers over ``client_data`` (one source per device,
    named by ``device_names`` in the lineage and to the ``gate``); orders go into ``ledger``
    (memory when None)."""
    from flwr.common.constant import SUPERLINK_NODE_ID
    from flwr.supercore.task_identity import TaskIdentity

    from cloud_hub.fl.inprocess_grid import InProcessGrid
    from cloud_hub.fl.run import initial_weights
    from shared.fl.async_client import AsyncClientSpec, build_async_client_app
    from shared.fl.training import LocalTrainingLimits

    if len(client_data) < config.fedbuff.buffer_size:
        raise HubConfigError(
            f"{len(client_data)} devices cannot fill buffers of {config.fedbuff.buffer_size}"
        )
    if model_store is not None:
        model_store.check_available(run_id)
    evaluate = _evaluator(config.model_name, validation)
    started = time.perf_counter()
    versions: list[dict[str, Any]] = []
    verdicts: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="fedfleet-async-") as tmp:
        spec = AsyncClientSpec(
            model_name=config.model_name,
            data=InMemoryPartitions(tuple(client_data)),
            held_root=Path(tmp),
            limits=LocalTrainingLimits(
                batch_size=config.batch_size,
                max_local_epochs=config.local_epochs,
                learning_rate=config.learning_rate,
            ),
            seed=config.seed,
        )
        grid = InProcessGrid(build_async_client_app(spec), len(client_data), seed=config.seed)
        names = {
            node: device_names[i] if device_names else f"client-{i}"
            for i, node in enumerate(grid.get_node_ids())
        }
        TaskIdentity.task_id = 1
        TaskIdentity.run_id = grid.run.run_id
        TaskIdentity.node_id = SUPERLINK_NODE_ID
        try:
            run = AsyncBufferedRun(
                grid,
                initial_weights(config.model_name, config.seed, initial_state),
                fedbuff=config.fedbuff,
                secagg=config.secagg,
                ledger=ledger,
            )
            attempts = 0
            while run.version < config.buffers:
                attempts += 1
                if attempts > 2 * config.buffers:
                    last = f"; {verdicts[-1]['summary']}" if verdicts else ""
                    raise TrainingError(
                        f"asynchronous run {run_id}: {run.version} of {config.buffers} buffers "
                        f"after {attempts - 1} attempts{last}"
                    )
                holding = run.holders  # one ledger read per round
                idle = [n for n in grid.get_node_ids() if n not in holding]
                _order_eligible(run, idle, names, gate, verdicts)
                record = run.run_buffer()
                if record is not None and record.completed:
                    loss, accuracy = evaluate(run.weights)
                    versions.append({"version": run.version, "accuracy": accuracy, "loss": loss})
        finally:
            grid.close()
    result = BufferedRunResult(
        run_id=run_id,
        config=config,
        buffers=tuple(run.buffers),
        versions=tuple(versions),
        weights=run.weights,
        wall_s=time.perf_counter() - started,
        data_fingerprint=data_fingerprint(client_data),
        device_names=names,
        eligibility=tuple(verdicts),
    )
    if model_store is not None:
        model_store.save_candidate(
            run_id=run_id,
            model_name=config.model_name,
            weights=run.weights,
            lineage={**config.lineage(), "run_id": run_id, "buffers": result.summary()["buffers"]},
            metrics={"accuracy": versions[-1]["accuracy"], "loss": versions[-1]["loss"]},
            created_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        )
    return result

"""``run_federated``: one federated training run on the Simulation Engine, end to end.

This is what the closed loop calls ("retrain with this cohort") and what
``cloud-hub simulate`` drives. The clients are the same ClientApp the agents run
(:mod:`shared.fl.client`); the server is the hub's ServerApp (:mod:`cloud_hub.fl.server_app`).

Engines:

- ``"ray"``: Flower's ``run_simulation`` (Ray actors, ``num_cpus=1`` per client). Client data
  goes to a temporary folder of ``.npz`` partitions so that each message ships a path, not
  the data.
- ``"inprocess"``: the same ServerApp and ClientApp driven through
  :class:`~cloud_hub.fl.inprocess_grid.InProcessGrid` — no Ray start-up (seconds,
  ~1.4 GB), which is what small cohorts and tests want.
- ``"auto"``: in-process up to :data:`INPROCESS_MAX_CLIENTS` clients, Ray above.
"""

from __future__ import annotations

import datetime as dt
import logging
import tempfile
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from cloud_hub.errors import HubConfigError, TrainingError
from cloud_hub.fl.config import FederatedRunConfig
from cloud_hub.fl.model_store import CandidateRecord, ModelStore
from cloud_hub.fl.partition import data_fingerprint
from cloud_hub.fl.recorder import RoundMetrics, RunRecorder
from cloud_hub.fl.server_app import ValidationEvaluator, build_server_app
from cloud_hub.fl.workflow import SecureRoundAbortedError
from shared.fl import InMemoryPartitions, LocalDataSource, PartitionDirectory, PartitionFiles

if TYPE_CHECKING:
    from shared.fl.mods import DropoutSchedule

__all__ = ["INPROCESS_MAX_CLIENTS", "FederatedRunResult", "initial_weights", "run_federated"]

log = logging.getLogger(__name__)

INPROCESS_MAX_CLIENTS = 100


@dataclass(frozen=True)
class FederatedRunResult:
    """What a finished run produced."""

    run_id: str
    config: FederatedRunConfig
    engine: str
    rounds: tuple[RoundMetrics, ...]
    weights: list[NDArray] = field(repr=False)
    wall_s: float
    data_fingerprint: str
    candidate: CandidateRecord | None = None
    mask_generator: str | None = None  # what the hub unmasked with (None: no SecAgg+ round)
    client_mask_generators: tuple[str, ...] = ()  # what the clients reported

    def lineage(self) -> dict[str, Any]:
        return self.config.lineage(
            mask_generator=self.mask_generator, client_mask_generators=self.client_mask_generators
        )

    @property
    def final_accuracy(self) -> float:
        return self.rounds[-1].accuracy

    @property
    def final_loss(self) -> float:
        return self.rounds[-1].loss

    def summary(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "engine": self.engine,
            "final_accuracy": self.final_accuracy,
            "final_loss": self.final_loss,
            "wall_s": self.wall_s,
            "rounds": [r.to_dict() for r in self.rounds],
            "lineage": self.lineage(),
            "data_fingerprint": self.data_fingerprint,
        }


def initial_weights(
    model_name: str, seed: int, initial_state: Mapping[str, Any] | None
) -> list[NDArray]:
    """The starting global model: ``initial_state`` (a champion) or a fresh seeded model."""
    from shared.fl.training import get_weights
    from shared.models import build_model

    model = build_model(model_name, seed=seed)
    if initial_state is not None:
        try:
            model.load_state_dict(dict(initial_state), strict=True)
        except (RuntimeError, KeyError) as exc:
            raise HubConfigError(f"initial_state does not fit {model_name}: {exc}") from exc
    return get_weights(model)


def _run_inprocess(server_app: Any, client_app: Any, config: FederatedRunConfig) -> None:
    from flwr.app import Context, RecordDict
    from flwr.common.constant import SUPERLINK_NODE_ID
    from flwr.supercore.task_identity import TaskIdentity

    from cloud_hub.fl.inprocess_grid import InProcessGrid

    grid = InProcessGrid(
        client_app, config.num_clients, seed=config.seed, run_config=config.client_run_config()
    )
    # Messages take their run/task identity from this process-wide record, exactly as
    # Flower's ``run_simulation`` sets it for its in-process ServerApp.
    TaskIdentity.task_id = 1
    TaskIdentity.run_id = grid.run.run_id
    TaskIdentity.node_id = SUPERLINK_NODE_ID
    try:
        context = Context(
            run_id=grid.run.run_id, node_id=0, node_config={}, state=RecordDict(), run_config={}
        )
        server_app(grid, context)
    finally:
        grid.close()


def _run_ray(
    server_app: Any, client_app: Any, config: FederatedRunConfig, ray_cpus: int | None
) -> None:
    from flwr.simulation import run_simulation

    init_args: dict[str, Any] = {"include_dashboard": False, "logging_level": logging.ERROR}
    if ray_cpus is not None:
        init_args["num_cpus"] = ray_cpus
    run_simulation(
        server_app=server_app,
        client_app=client_app,
        num_supernodes=config.num_clients,
        backend_config={
            "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
            "init_args": init_args,
        },
    )


def run_federated(
    config: FederatedRunConfig,
    client_data: Sequence[LocalDataSource],
    validation: tuple[NDArray, NDArray],
    *,
    initial_state: Mapping[str, Any] | None = None,
    model_store: ModelStore | None = None,
    run_id: str | None = None,
    dropout: DropoutSchedule | None = None,
    on_round: Callable[[RoundMetrics], None] | None = None,
    ray_cpus: int | None = None,
) -> FederatedRunResult:
    """Train ``config.model_name`` over ``client_data`` (one source per client).

    Evaluates on ``validation`` after every round, stores the final model in ``model_store``
    (if given) and returns the run's result. A SecAgg+ round that loses too many clients
    raises :class:`~cloud_hub.fl.workflow.SecureRoundAbortedError` (a ``TrainingError``)
    carrying ``kept_round`` and ``kept_weights``: the last good global model.
    ``dropout`` makes chosen clients vanish mid-round (fault scenarios and tests).
    """
    from shared.fl.client import ClientAppSpec, build_client_app
    from shared.fl.training import LocalTrainingLimits

    if len(client_data) != config.num_clients:
        raise HubConfigError(
            f"config.num_clients is {config.num_clients} but {len(client_data)} data sources were given"
        )
    x_val, y_val = validation
    if len(y_val) == 0:
        raise HubConfigError("the validation set is empty")
    engine = config.engine
    if engine == "auto":
        engine = "inprocess" if config.num_clients <= INPROCESS_MAX_CLIENTS else "ray"
    run_id = run_id or f"fl-{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"
    if model_store is not None:
        model_store.check_available(run_id)  # before any round, not after the training
    fingerprint = data_fingerprint(client_data)
    recorder = RunRecorder(on_round)
    evaluator = ValidationEvaluator(
        config.model_name, np.asarray(x_val), np.asarray(y_val), recorder
    )
    server_app = build_server_app(
        config,
        initial_weights=initial_weights(config.model_name, config.seed, initial_state),
        evaluator=evaluator,
        recorder=recorder,
    )
    limits = LocalTrainingLimits(
        batch_size=config.batch_size,
        max_local_epochs=config.local_epochs,
        time_budget_s=config.time_budget_s,
        learning_rate=config.learning_rate,
    )
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="fedfleet-fl-") as tmp:
        if engine == "ray":
            data: Any = PartitionFiles(PartitionDirectory.write(Path(tmp), list(client_data)))
        else:
            data = InMemoryPartitions(tuple(client_data))
        spec = ClientAppSpec(
            model_name=config.model_name,
            data=data,
            limits=limits,
            secure_aggregation=config.secagg.enabled,
            central_dp_clipping=config.dp.enabled,
            dropout=dropout,
            seed=config.seed,
        )
        client_app = build_client_app(spec)
        try:
            if engine == "ray":
                _run_ray(server_app, client_app, config, ray_cpus)
            else:
                _run_inprocess(server_app, client_app, config)
        except SecureRoundAbortedError as exc:
            exc.kept_round = recorder.global_round
            exc.kept_weights = recorder.global_weights
            exc.rounds = tuple(recorder.rounds)
            raise
        except (TrainingError, HubConfigError):
            raise
        except Exception as exc:  # Flower / Ray failures, translated at the boundary
            raise TrainingError(f"federated run {run_id} failed: {exc}") from exc
    wall = time.perf_counter() - started
    weights = recorder.final_model(run_id, config.num_rounds, config.on_round_failure)
    rounds = tuple(recorder.rounds)
    unmasked_with, reported = recorder.mask_generators()
    result = FederatedRunResult(
        run_id=run_id,
        config=config,
        engine=engine,
        rounds=rounds,
        weights=weights,
        wall_s=wall,
        data_fingerprint=fingerprint,
        mask_generator=unmasked_with,
        client_mask_generators=tuple(reported),
    )
    if model_store is not None:
        lineage = {
            **result.lineage(),
            "run_id": run_id,
            "engine": engine,
            "data_fingerprint": fingerprint,
        }
        metrics = {
            "accuracy": result.final_accuracy,
            "loss": result.final_loss,
            "wall_s": wall,
            "per_round": [r.to_dict() for r in rounds],
        }
        candidate = model_store.save_candidate(
            run_id=run_id,
            model_name=config.model_name,
            weights=weights,
            lineage=lineage,
            metrics=metrics,
            created_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        )
        result = replace(result, candidate=candidate)
    return result

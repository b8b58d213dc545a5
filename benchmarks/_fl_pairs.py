"""Side-by-side federated runs for ``benchmarks/fl.py``: contenders alternated and repeated.

The machine this runs on is shared (2 cores, other work coming and going), so absolute times
drift by several x within a minute. Every figure here is therefore a ratio of contenders run
back to back in the same process, in alternating order (A B, B A, A B, ...), repeated, and
reported as the ratio of medians; process CPU time (all threads) is reported next to wall
time because it is far less sensitive to the neighbours' load.

Both contenders of a pair get the same partitions and the same transport: fedfleet's
in-process grid (Flower's ``Grid`` interface, each message deep-copied as a transport would)
for fedfleet's ServerApp and for the stock Flower apps of ``_flower_baseline``.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

__all__ = ["digits_partitions", "fair_flower_pair", "secagg_args", "secagg_pair"]

Runner = Callable[[], float | None]  # returns the mean fit-round wall time when it knows it


def digits_partitions(num_clients: int, per_client: int | None = None) -> tuple[list[Any], Any]:
    """Digits, IID over ``num_clients``, 20 % held out; ``per_client`` tiles the training set
    (with a little pixel noise) so every client has that many samples."""
    from cloud_hub.fl.partition import PartitionSpec, partition_arrays, split_holdout
    from shared.data import load_digits_dataset
    from shared.fl import ArrayDataSource

    x, y = load_digits_dataset()
    (x_train, y_train), holdout = split_holdout(x, y, 0.2, seed=0)
    if per_client is None:
        return partition_arrays(x_train, y_train, num_clients, PartitionSpec(kind="iid")), holdout
    rng = np.random.default_rng(0)
    sources = []
    for _ in range(num_clients):
        idx = rng.integers(0, len(y_train), per_client)
        noisy = x_train[idx] + rng.normal(0, 0.03, x_train[idx].shape).astype(np.float32)
        sources.append(ArrayDataSource(np.clip(noisy, 0, 1).astype(np.float32), y_train[idx]))
    return sources, holdout


def secagg_args(num_shares: int | float) -> dict[str, Any]:
    # The same parameters as fedfleet's SecAggConfig defaults.
    return {
        "num_shares": num_shares,
        "reconstruction_threshold": 0.6,
        "max_weight": 10_000.0,
        "clipping_range": 8.0,
        "quantization_range": 1 << 22,
        "modulus_range": 1 << 32,
    }


def _fedfleet(sources: Sequence[Any], holdout: Any, rounds: int, secagg: float | None) -> Runner:
    from cloud_hub.fl import FederatedRunConfig, SecAggConfig, run_federated

    cfg = FederatedRunConfig(
        model_name="digits-cnn", num_clients=len(sources), num_rounds=rounds, local_epochs=1,
        batch_size=16, learning_rate=0.05, engine="inprocess",
        secagg=SecAggConfig(num_shares=secagg) if secagg else SecAggConfig(enabled=False),
    )  # fmt: skip

    def run() -> float:
        result = run_federated(cfg, sources, holdout)
        fit = [r.fit_time_s for r in result.rounds if r.round > 0]
        return sum(fit) / len(fit)

    return run


def _stock_flower(
    sources: Sequence[Any], holdout: Any, rounds: int, secagg: float | None
) -> Runner:
    from flwr.app import Context, RecordDict
    from flwr.common.constant import SUPERLINK_NODE_ID
    from flwr.supercore.task_identity import TaskIdentity

    from benchmarks._flower_baseline import stock_flower_apps
    from cloud_hub.fl.inprocess_grid import InProcessGrid

    parts = [(s.x, s.y) for s in sources]

    def run() -> None:
        apps = stock_flower_apps(
            parts, holdout, rounds=rounds, secagg=secagg_args(secagg) if secagg else None
        )
        grid = InProcessGrid(apps.client_app, len(parts), seed=0)
        TaskIdentity.task_id, TaskIdentity.run_id = 1, grid.run.run_id
        TaskIdentity.node_id = SUPERLINK_NODE_ID
        try:
            ctx = Context(run_id=grid.run.run_id, node_id=0, node_config={}, state=RecordDict(),
                          run_config={})  # fmt: skip
            apps.server_app(grid, ctx)
        finally:
            grid.close()

    return run


def _alternate(a: Runner, b: Runner, repeats: int) -> dict[str, Any]:
    samples: dict[str, dict[str, list[float]]] = {
        k: {"wall": [], "cpu": [], "fit": []} for k in "ab"
    }
    for rep in range(repeats):
        for key, runner in (("a", a), ("b", b)) if rep % 2 == 0 else (("b", b), ("a", a)):
            wall, cpu = time.perf_counter(), time.process_time()
            fit = runner()
            samples[key]["wall"].append(time.perf_counter() - wall)
            samples[key]["cpu"].append(time.process_time() - cpu)
            if fit is not None:
                samples[key]["fit"].append(fit)

    def ratio(kind: str) -> float | None:
        if not samples["a"][kind] or not samples["b"][kind]:
            return None
        return round(
            statistics.median(samples["a"][kind]) / statistics.median(samples["b"][kind]), 3
        )

    return {
        "ratio_wall": ratio("wall"),
        "ratio_cpu": ratio("cpu"),
        "ratio_fit_round": ratio("fit"),
        "samples": {
            k: {m: [round(v, 3) for v in vs] for m, vs in d.items()} for k, d in samples.items()
        },
        "repeats": repeats,
    }


def secagg_pair(
    num_clients: int, rounds: int, repeats: int, *, num_shares: float = 1.0
) -> dict[str, Any]:
    """fedfleet with SecAgg+ (a) against fedfleet without (b), 1 local epoch."""
    sources, holdout = digits_partitions(num_clients)
    return _alternate(
        _fedfleet(sources, holdout, rounds, num_shares),
        _fedfleet(sources, holdout, rounds, None),
        repeats,
    )


def fair_flower_pair(
    num_clients: int, rounds: int, repeats: int, *, secagg: float | None, per_client: int | None
) -> dict[str, Any]:
    """fedfleet (a) against stock Flower (b): same partitions, workflow, strategy, transport."""
    sources, holdout = digits_partitions(num_clients, per_client)
    return _alternate(
        _fedfleet(sources, holdout, rounds, secagg),
        _stock_flower(sources, holdout, rounds, secagg),
        repeats,
    )

"""Federated-training benchmark: SecAgg+ accuracy and overhead, scale, and fedfleet's
overhead against a plain Flower simulation written here without fedfleet.

    .venv/bin/python benchmarks/fl.py            # full: 20 clients x 20 rounds, 1000 clients
    .venv/bin/python benchmarks/fl.py --quick    # < 60 s smoke version

The last line printed is one JSON object with at least: accuracy_secagg, accuracy_plain,
secagg_overhead_ratio, clients_scale, scale_wall_s, scale_peak_rss_mb, overhead_vs_flower.

Scale runs execute in child processes (one per engine) so that wall time and peak memory
(the child and every process it starts, e.g. Ray workers, sampled every 0.2 s) are
measured the same way for fedfleet and for plain Flower.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


# --------------------------------------------------------------------------------------
# shared data for both scale children: digits, IID over n clients, 20 % hub holdout
def _digits_split(num_clients: int) -> tuple[list[Any], tuple[Any, Any]]:
    from cloud_hub.fl.partition import PartitionSpec, partition_arrays, split_holdout
    from shared.data import load_digits_dataset

    x, y = load_digits_dataset()
    train, holdout = split_holdout(x, y, 0.2, seed=0)
    return partition_arrays(train[0], train[1], num_clients, PartitionSpec(kind="iid")), holdout


def child_fedfleet(num_clients: int, rounds: int) -> dict[str, Any]:
    from cloud_hub.fl import FederatedRunConfig, SecAggConfig, run_federated

    sources, holdout = _digits_split(num_clients)
    cfg = FederatedRunConfig(
        model_name="digits-cnn",
        num_clients=num_clients,
        num_rounds=rounds,
        local_epochs=1,
        batch_size=16,
        learning_rate=0.05,
        engine="ray",
        secagg=SecAggConfig(enabled=False),
    )
    started = time.perf_counter()
    result = run_federated(cfg, sources, holdout, ray_cpus=2)
    return {"wall_s": time.perf_counter() - started, "accuracy": result.final_accuracy}


def child_flower(num_clients: int, rounds: int) -> dict[str, Any]:
    """The same model, data and training, as a plain Flower app (no fedfleet code)."""
    import numpy as np
    import torch
    from flwr.app import Context
    from flwr.client import NumPyClient
    from flwr.clientapp import ClientApp
    from flwr.common import ndarrays_to_parameters
    from flwr.server import ServerAppComponents, ServerConfig
    from flwr.server.strategy import FedAvg
    from flwr.serverapp import ServerApp
    from flwr.simulation import run_simulation

    from shared.models import build_model  # the model definition only

    sources, (x_val, y_val) = _digits_split(num_clients)
    parts = [(s.x, s.y) for s in sources]

    def weights(model: torch.nn.Module) -> list[np.ndarray]:
        return [v.detach().cpu().numpy().copy() for v in model.state_dict().values()]

    def load(model: torch.nn.Module, arrays: list[np.ndarray]) -> None:
        keys = list(model.state_dict().keys())
        model.load_state_dict({k: torch.as_tensor(a) for k, a in zip(keys, arrays, strict=True)})

    class Client(NumPyClient):
        def __init__(self, x: np.ndarray, y: np.ndarray) -> None:
            self.x, self.y = torch.from_numpy(x), torch.from_numpy(y)
            self.model = build_model("digits-cnn", seed=0)

        def fit(self, parameters, config):  # type: ignore[no-untyped-def]
            load(self.model, parameters)
            opt = torch.optim.SGD(self.model.parameters(), lr=0.05, momentum=0.9)
            loss_fn = torch.nn.CrossEntropyLoss()
            self.model.train()
            order = torch.randperm(len(self.y))
            for start in range(0, len(order), 16):
                idx = order[start : start + 16]
                opt.zero_grad()
                loss_fn(self.model(self.x[idx]), self.y[idx]).backward()
                opt.step()
            return weights(self.model), len(self.y), {}

    def client_fn(context: Context):  # type: ignore[no-untyped-def]
        torch.set_num_threads(1)
        x, y = parts[int(context.node_config["partition-id"])]
        return Client(x, y).to_client()

    holder: dict[str, float] = {}
    eval_model = build_model("digits-cnn")

    def evaluate(rnd: int, arrays: list[np.ndarray], config: dict) -> tuple[float, dict]:
        load(eval_model, arrays)
        with torch.no_grad():
            logits = eval_model(torch.from_numpy(x_val))
        acc = float((logits.argmax(1).numpy() == y_val).mean())
        holder["accuracy"] = acc
        return float(torch.nn.functional.cross_entropy(logits, torch.from_numpy(y_val))), {
            "accuracy": acc
        }

    def server_fn(context: Context) -> ServerAppComponents:
        strategy = FedAvg(
            fraction_fit=1.0,
            fraction_evaluate=0.0,
            min_fit_clients=2,
            min_available_clients=2,
            evaluate_fn=evaluate,
            initial_parameters=ndarrays_to_parameters(weights(build_model("digits-cnn", seed=0))),
        )
        return ServerAppComponents(strategy=strategy, config=ServerConfig(num_rounds=rounds))

    started = time.perf_counter()
    run_simulation(
        server_app=ServerApp(server_fn=server_fn),
        client_app=ClientApp(client_fn=client_fn),
        num_supernodes=num_clients,
        backend_config={
            "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
            "init_args": {
                "num_cpus": 2,
                "include_dashboard": False,
                "logging_level": logging.ERROR,
            },
        },
    )
    return {
        "wall_s": time.perf_counter() - started,
        "accuracy": holder.get("accuracy", float("nan")),
    }


def _measure_child(kind: str, num_clients: int, rounds: int) -> dict[str, Any]:
    """Run a scale child; return its JSON result plus the tree's peak RSS."""
    import psutil

    argv = [
        sys.executable,
        __file__,
        "--child",
        kind,
        "--clients",
        str(num_clients),
        "--rounds",
        str(rounds),
    ]
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT
    )
    root = psutil.Process(proc.pid)
    peak = 0
    while proc.poll() is None:
        total = 0
        try:
            members = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            break
        for member in members:
            with contextlib.suppress(psutil.NoSuchProcess):
                total += member.memory_info().rss
        peak = max(peak, total)
        time.sleep(0.2)
    out, _ = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"scale child {kind} failed with {proc.returncode}")
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    result["peak_rss_mb"] = peak / 2**20
    return result


# --------------------------------------------------------------------------------------
def accuracy_pair(
    clients: int, rounds: int, threshold: float, local_epochs: int = 5
) -> dict[str, Any]:
    """The same digits run with and without SecAgg+ (in-process engine, same seeds)."""
    from cloud_hub.fl import (
        FederatedRunConfig,
        PartitionSpec,
        SecAggConfig,
        partition_arrays,
        run_federated,
    )
    from cloud_hub.fl.partition import split_holdout
    from shared.data import load_digits_dataset

    x, y = load_digits_dataset()
    train, holdout = split_holdout(x, y, 0.2, seed=0)
    sources = partition_arrays(
        train[0], train[1], clients, PartitionSpec(kind="dirichlet", alpha=0.5)
    )
    out: dict[str, Any] = {}
    for label, secagg in (
        ("plain", SecAggConfig(enabled=False)),
        ("secagg", SecAggConfig(reconstruction_threshold=threshold)),
    ):
        cfg = FederatedRunConfig(
            model_name="digits-cnn",
            num_clients=clients,
            num_rounds=rounds,
            local_epochs=local_epochs,
            batch_size=16,
            learning_rate=0.05,
            engine="inprocess",
            secagg=secagg,
        )
        result = run_federated(cfg, sources, holdout)
        fit = [r.fit_time_s for r in result.rounds if r.round > 0]
        out[label] = {
            "accuracy": result.final_accuracy,
            "best_accuracy": max(r.accuracy for r in result.rounds),
            "round_s": sum(fit) / len(fit),
            "wall_s": result.wall_s,
            "rounds_to_090": next((r.round for r in result.rounds if r.accuracy >= 0.9), None),
        }
    return out


def overhead_pair(clients: int, rounds: int, num_shares: float = 1.0) -> float:
    """Mean fit-round time with SecAgg+ / without, same cohort, light local work.

    ``num_shares`` < 1 gives each client a neighbourhood of that fraction of the cohort
    (SecAgg+ proper); 1.0 is the complete graph, whose Shamir reconstruction on the hub grows
    as clients x shares^2 in Flower's pure-Python share combination.
    """
    from cloud_hub.fl import (
        FederatedRunConfig,
        PartitionSpec,
        SecAggConfig,
        partition_arrays,
        run_federated,
    )
    from cloud_hub.fl.partition import split_holdout
    from shared.data import load_digits_dataset

    x, y = load_digits_dataset()
    train, holdout = split_holdout(x, y, 0.2, seed=0)
    sources = partition_arrays(train[0], train[1], clients, PartitionSpec(kind="iid"))
    times = {}
    for label, secagg in (
        ("plain", SecAggConfig(enabled=False)),
        ("secagg", SecAggConfig(num_shares=num_shares)),
    ):
        cfg = FederatedRunConfig(
            model_name="digits-cnn", num_clients=clients, num_rounds=rounds, local_epochs=1,
            batch_size=16, engine="inprocess", secagg=secagg,
        )  # fmt: skip
        result = run_federated(cfg, sources, holdout)
        fit = [r.fit_time_s for r in result.rounds if r.round > 0]
        times[label] = sum(fit) / len(fit)
    return times["secagg"] / times["plain"]


def _warm_up() -> None:
    """One tiny secure round, so that first-call costs (imports, torch kernels, thread pools)
    are not charged to whichever measured run happens to come first."""
    from cloud_hub.fl import FederatedRunConfig, run_federated
    from shared.data import generate_sensor_data
    from shared.fl import ArrayDataSource

    sources = [ArrayDataSource(*generate_sensor_data(20, seed=1, sample_seed=i)) for i in range(3)]
    cfg = FederatedRunConfig(
        model_name="sensor-mlp", num_clients=3, num_rounds=1, engine="inprocess"
    )
    run_federated(cfg, sources, generate_sensor_data(30, seed=1))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--child", choices=("fedfleet", "flower"))
    parser.add_argument("--clients", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=0)
    args = parser.parse_args()
    logging.getLogger("flwr").setLevel(logging.ERROR)
    if args.child:
        import flwr  # noqa: F401  (so its logger exists before we quiet it)

        logging.getLogger("flwr").setLevel(logging.ERROR)
        fn = child_fedfleet if args.child == "fedfleet" else child_flower
        print(json.dumps(fn(args.clients, args.rounds)))
        return

    started = time.perf_counter()
    _warm_up()
    if args.quick:
        acc = accuracy_pair(clients=6, rounds=3, threshold=0.6, local_epochs=3)
        ratios = {6: acc["secagg"]["round_s"] / acc["plain"]["round_s"]}
        scale_clients, scale_rounds = 10, 1
    else:
        acc = accuracy_pair(clients=20, rounds=20, threshold=0.6)
        ratios = {
            20: acc["secagg"]["round_s"] / acc["plain"]["round_s"],
            100: overhead_pair(100, 2, num_shares=0.2),
        }
        scale_clients, scale_rounds = 1000, 3
    print(f"accuracy: {json.dumps(acc)}", file=sys.stderr)
    print(f"secagg overhead ratios: {ratios}", file=sys.stderr)
    fedfleet = _measure_child("fedfleet", scale_clients, scale_rounds)
    flower = _measure_child("flower", scale_clients, scale_rounds)
    print(f"scale fedfleet: {fedfleet}\nscale flower:   {flower}", file=sys.stderr)
    first_clients = min(ratios)
    result = {
        "mode": "quick" if args.quick else "full",
        "accuracy_secagg": round(acc["secagg"]["accuracy"], 4),
        "accuracy_plain": round(acc["plain"]["accuracy"], 4),
        "accuracy_gap_points": round(
            100 * (acc["plain"]["accuracy"] - acc["secagg"]["accuracy"]), 2
        ),
        "rounds_to_090_secagg": acc["secagg"]["rounds_to_090"],
        "secagg_overhead_ratio": round(ratios[first_clients], 3),
        "secagg_overhead_ratio_by_clients": {str(k): round(v, 3) for k, v in ratios.items()},
        "clients_scale": scale_clients,
        "scale_rounds": scale_rounds,
        "scale_wall_s": round(fedfleet["wall_s"], 2),
        "scale_peak_rss_mb": round(fedfleet["peak_rss_mb"], 1),
        "flower_scale_wall_s": round(flower["wall_s"], 2),
        "flower_scale_peak_rss_mb": round(flower["peak_rss_mb"], 1),
        "overhead_vs_flower": round(fedfleet["wall_s"] / flower["wall_s"], 3),
        "benchmark_wall_s": round(time.perf_counter() - started, 1),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()

"""Federated-training benchmark: SecAgg+ accuracy and cost, and fedfleet against stock Flower.

    .venv/bin/python benchmarks/fl.py            # full (tens of minutes)
    .venv/bin/python benchmarks/fl.py --quick    # < 60 s smoke version

The last line printed is one JSON object with at least: accuracy_secagg, accuracy_plain,
secagg_overhead_ratio (the accuracy run: 5 local epochs), secagg_overhead_ratio_default_epochs
(20 clients, 1 epoch), secagg_overhead_ratio_100 (100 clients, num_shares 0.2; full mode),
secagg_ratio_fit_cpu_default_epochs / _100 and secagg_floor_ratio_cpu_default_epochs / _100
(the same rounds in CPU seconds, and the floor the protocol's key agreement alone sets: see
``_secagg_costs``, whose split of the extra seconds is under "secagg_costs"),
secagg_client_cpu_ms_per_round and secagg_client_cpu_vs_flower (one device's SecAgg+ CPU per
round, fedfleet's client against Flower's stock secaggplus_mod: see ``_secagg_client``),
overhead_vs_flower and overhead_vs_flower_secagg (fedfleet / stock Flower with the same
DefaultWorkflow + LegacyContext + FedAvg, same partitions; see ``_fl_pairs`` and
``_flower_baseline``), the raw samples of every pair, the CPU it ran on and the load average
before and after (the machine is shared).

Every ratio comes from contenders alternated and repeated in one process (``_fl_pairs``):
the machine is shared, so only side-by-side ratios mean anything. Full mode adds a 1,000-client
run of both on Flower's Simulation Engine (Ray) in child processes, with and without SecAgg+
(20 shares per client), 64 samples per client, wall time and peak memory of the whole tree.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._fl_pairs import digits_partitions, fair_flower_pair, secagg_pair  # noqa: E402
from benchmarks._secagg_client import secagg_client_costs  # noqa: E402
from benchmarks._secagg_costs import secagg_costs  # noqa: E402
from shared.device_facts import detect_device_facts  # noqa: E402


# --------------------------------------------------------------------------------------
# scale children (Ray, full mode): the same partitions for both, realistic data per client
def _shares(value: float) -> int | float:
    """``--secagg`` above 1 is a count of shares per client, at most 1 a fraction (Flower's)."""
    return int(value) if value > 1 else value


def child_fedfleet(num_clients: int, rounds: int, secagg: float, per_client: int) -> dict[str, Any]:
    from cloud_hub.fl import FederatedRunConfig, SecAggConfig, run_federated

    sources, holdout = digits_partitions(num_clients, per_client)
    cfg = FederatedRunConfig(
        model_name="digits-cnn",
        num_clients=num_clients,
        num_rounds=rounds,
        local_epochs=1,
        batch_size=16,
        learning_rate=0.05,
        engine="ray",
        secagg=SecAggConfig(num_shares=_shares(secagg)) if secagg else SecAggConfig(enabled=False),
    )
    started = time.perf_counter()
    result = run_federated(cfg, sources, holdout, ray_cpus=2)
    return {"wall_s": time.perf_counter() - started, "accuracy": result.final_accuracy}


def child_flower(num_clients: int, rounds: int, secagg: float, per_client: int) -> dict[str, Any]:
    """Stock Flower (``_flower_baseline``) on Flower's Simulation Engine, same settings."""
    from flwr.simulation import run_simulation

    from benchmarks._fl_pairs import secagg_args
    from benchmarks._flower_baseline import stock_flower_apps

    sources, holdout = digits_partitions(num_clients, per_client)
    apps = stock_flower_apps(
        [(s.x, s.y) for s in sources],
        holdout,
        rounds=rounds,
        secagg=secagg_args(_shares(secagg)) if secagg else None,
    )
    started = time.perf_counter()
    run_simulation(
        server_app=apps.server_app,
        client_app=apps.client_app,
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
    return {"wall_s": time.perf_counter() - started, "accuracy": apps.accuracy}


def _measure_child(
    kind: str, num_clients: int, rounds: int, *, secagg: float = 0.0, per_client: int = 64
) -> dict[str, Any]:
    """Run a scale child; return its JSON result plus the tree's peak RSS."""
    import psutil

    argv = [sys.executable, __file__, "--child", kind, "--clients", str(num_clients)]
    argv += ["--rounds", str(rounds), "--secagg", str(secagg), "--per-client", str(per_client)]
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
    parser.add_argument("--secagg", type=float, default=0.0)
    parser.add_argument("--per-client", type=int, default=64)
    args = parser.parse_args()
    logging.getLogger("flwr").setLevel(logging.ERROR)
    if args.child:
        import flwr  # noqa: F401  (so its logger exists before we quiet it)

        logging.getLogger("flwr").setLevel(logging.ERROR)
        fn = child_fedfleet if args.child == "fedfleet" else child_flower
        print(json.dumps(fn(args.clients, args.rounds, args.secagg, args.per_client)))
        return
    logging.disable(logging.WARNING)  # Flower logs every round at INFO on stderr

    started = time.perf_counter()
    load_before = os.getloadavg()
    _warm_up()
    if args.quick:
        acc = accuracy_pair(clients=4, rounds=2, threshold=0.6, local_epochs=1)
        secagg_20 = secagg_pair(20, 1, 3)
        costs_20 = secagg_costs(20, 2)
        client = secagg_client_costs(19, 5)
        secagg_100 = costs_100 = None
        vs_flower = fair_flower_pair(6, 1, 3, secagg=None, per_client=None)
        vs_flower_secagg = fair_flower_pair(6, 1, 3, secagg=1.0, per_client=None)
    else:
        acc = accuracy_pair(clients=20, rounds=20, threshold=0.6)
        secagg_20 = secagg_pair(20, 3, 5)
        costs_20 = secagg_costs(20, 4)
        client = secagg_client_costs(19, 20)
        secagg_100 = secagg_pair(100, 2, 3, num_shares=0.2)
        costs_100 = secagg_costs(100, 3, num_shares=0.2)
        vs_flower = fair_flower_pair(100, 2, 3, secagg=None, per_client=64)
        vs_flower_secagg = fair_flower_pair(100, 2, 3, secagg=0.2, per_client=64)
    print(f"accuracy: {json.dumps(acc)}", file=sys.stderr)
    result: dict[str, Any] = {
        "mode": "quick" if args.quick else "full",
        "accuracy_secagg": round(acc["secagg"]["accuracy"], 4),
        "accuracy_plain": round(acc["plain"]["accuracy"], 4),
        "accuracy_gap_points": round(
            100 * (acc["plain"]["accuracy"] - acc["secagg"]["accuracy"]), 2
        ),
        "rounds_to_090_secagg": acc["secagg"]["rounds_to_090"],
        # 5 local epochs, dirichlet: the accuracy run's own round times (not the default)
        "secagg_overhead_ratio": round(acc["secagg"]["round_s"] / acc["plain"]["round_s"], 3),
        "secagg_overhead_ratio_default_epochs": secagg_20["ratio_fit_round"],
        "secagg_overhead_ratio_100": secagg_100["ratio_fit_round"] if secagg_100 else None,
        # CPU seconds of one fit round, SecAgg+ over plain, and the floor set by the protocol's
        # key agreement alone (2 ECDH per neighbour per client): see _secagg_costs
        "secagg_ratio_fit_cpu_default_epochs": costs_20["ratio_fit_cpu"],
        "secagg_floor_ratio_cpu_default_epochs": costs_20["floor_ratio_cpu"],
        "secagg_floor_with_masks_ratio_cpu_default_epochs": costs_20["floor_with_masks_ratio_cpu"],
        "secagg_ratio_fit_cpu_100": costs_100["ratio_fit_cpu"] if costs_100 else None,
        "secagg_floor_ratio_cpu_100": costs_100["floor_ratio_cpu"] if costs_100 else None,
        "secagg_floor_with_masks_ratio_cpu_100": (
            costs_100["floor_with_masks_ratio_cpu"] if costs_100 else None
        ),
        # one device's SecAgg+ CPU per round (19 neighbours, no training), fedfleet's client
        # against Flower's stock secaggplus_mod on the same messages: see _secagg_client
        "secagg_client_cpu_ms_per_round": client["cpu_ms_per_round"],
        "secagg_client_cpu_vs_flower": client["ratio_fedfleet_over_flower"],
        "overhead_vs_flower": vs_flower["ratio_wall"],
        "overhead_vs_flower_secagg": vs_flower_secagg["ratio_wall"],
        "pairs": {
            "secagg_20_clients_1_epoch": secagg_20,
            "secagg_100_clients_shares_0.2": secagg_100,
            "vs_flower": vs_flower,
            "vs_flower_secagg": vs_flower_secagg,
        },
        "secagg_costs": {"20_clients_1_epoch": costs_20, "100_clients_shares_0.2": costs_100},
        "secagg_client_costs": client,
    }
    if not args.quick:
        result["scale"] = _scale_runs(1000, 3, per_client=64)
    facts = detect_device_facts()
    result["cpu"] = {"model": facts.cpu_model, "flags": facts.isa_flags, "cores": os.cpu_count()}
    result["benchmark_wall_s"] = round(time.perf_counter() - started, 1)
    result["load_average"] = {"before": load_before, "after": os.getloadavg()}
    print(json.dumps(result))


def _scale_runs(clients: int, rounds: int, *, per_client: int) -> dict[str, Any]:
    """fedfleet and stock Flower on Ray, with and without SecAgg+ (20 shares per client)."""
    out: dict[str, Any] = {"clients": clients, "rounds": rounds, "per_client": per_client}
    for label, secagg in (("plain", 0.0), ("secagg", 20.0)):
        fedfleet = _measure_child("fedfleet", clients, rounds, secagg=secagg, per_client=per_client)
        flower = _measure_child("flower", clients, rounds, secagg=secagg, per_client=per_client)
        print(f"scale {label}: fedfleet {fedfleet} flower {flower}", file=sys.stderr)
        out[label] = {
            "fedfleet_wall_s": round(fedfleet["wall_s"], 2),
            "fedfleet_peak_rss_mb": round(fedfleet["peak_rss_mb"], 1),
            "flower_wall_s": round(flower["wall_s"], 2),
            "flower_peak_rss_mb": round(flower["peak_rss_mb"], 1),
            "ratio_wall": round(fedfleet["wall_s"] / flower["wall_s"], 3),
        }
    return out


if __name__ == "__main__":
    main()

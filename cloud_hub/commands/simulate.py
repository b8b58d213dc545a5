"""``cloud-hub simulate SCENARIO``: run a federated simulation from a TOML scenario.

Shows one progress line per round, writes ``rounds.json``, ``summary.json`` and
``metrics.png`` into the results folder, stores the trained model as a candidate in the hub
model store (``--model-store``, default ``results/model-store``) and prints a summary table.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["register", "run_simulate"]


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("simulate", help="run a federated simulation scenario (TOML)")
    parser.add_argument(
        "scenario", type=Path, help="scenario file, e.g. simulations/digits_iid.toml"
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="results folder (default: results/<name>-<time>)"
    )
    parser.add_argument("--rounds", type=int, default=None, help="override the number of rounds")
    parser.add_argument("--clients", type=int, default=None, help="override the number of clients")
    parser.add_argument("--engine", choices=("auto", "inprocess", "ray"), default=None)
    parser.add_argument(
        "--no-secagg", action="store_true", help="turn SecAgg+ off (it is on by default)"
    )
    parser.add_argument(
        "--model-store",
        type=Path,
        default=Path("results") / "model-store",
        help="the hub model store receiving the trained model (default: results/model-store)",
    )
    parser.set_defaults(func=run_simulate)


def run_simulate(args: argparse.Namespace) -> int:
    from cloud_hub.fl.model_store import ModelStore
    from cloud_hub.fl.report import format_progress, format_summary_table, write_results
    from cloud_hub.fl.run import run_federated
    from cloud_hub.fl.scenario import load_scenario
    from cloud_hub.fl.workflow import SecureRoundAbortedError

    scenario = load_scenario(args.scenario)
    changes: dict[str, Any] = {}
    if args.rounds is not None:
        changes["num_rounds"] = args.rounds
    if args.clients is not None:
        changes["num_clients"] = args.clients
    if args.engine is not None:
        changes["engine"] = args.engine
    if args.no_secagg:
        from cloud_hub.fl.config import SecAggConfig

        changes["secagg"] = SecAggConfig(enabled=False)
    if changes:
        scenario = scenario.with_training(**changes)
    cfg = scenario.training
    out = args.out or Path("results") / f"{scenario.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    if not args.verbose:
        logging.getLogger("flwr").setLevel(logging.WARNING)
    print(
        f"scenario {scenario.name}: {cfg.num_clients} clients, {cfg.num_rounds} rounds, "
        f"{cfg.strategy.name}, partition {scenario.partition.kind}, "
        f"SecAgg+ {'on' if cfg.secagg.enabled else 'off'}, dropout {scenario.dropout_rate:.0%}",
        file=sys.stderr,
    )
    sources, validation = scenario.build_data()

    def progress(metrics: Any) -> None:
        print(format_progress(metrics, cfg.num_rounds), file=sys.stderr, flush=True)

    store = ModelStore(args.model_store)
    try:
        result = run_federated(
            cfg,
            sources,
            validation,
            model_store=store,
            dropout=scenario.dropout_schedule(),
            on_round=progress,
        )
    except SecureRoundAbortedError as exc:
        rounds = list(getattr(exc, "rounds", ()))
        if rounds:
            write_results(out, scenario.name, {"status": "aborted", "error": str(exc)}, rounds)
        raise
    summary = {"scenario": scenario.name, "status": "ok", **result.summary()}
    paths = write_results(out, scenario.name, summary, list(result.rounds))
    failed = sum(1 for r in result.rounds if r.status != "ok")
    rows = [
        ("scenario", scenario.name),
        ("run id", result.run_id),
        ("engine", result.engine),
        ("clients / rounds", f"{cfg.num_clients} / {cfg.num_rounds}"),
        ("strategy", cfg.strategy.name),
        ("SecAgg+", "on" if cfg.secagg.enabled else "off"),
        ("final accuracy", f"{result.final_accuracy:.4f}"),
        ("final loss", f"{result.final_loss:.4f}"),
        ("best accuracy", f"{max(r.accuracy for r in result.rounds):.4f}"),
        ("failed rounds", str(failed)),
        ("wall time", f"{result.wall_s:.1f} s"),
        ("results", str(out)),
        ("plot", str(paths["plot"])),
    ]
    rows.append(("model candidate", str(store.root / result.run_id)))
    print(format_summary_table(rows))
    return 0

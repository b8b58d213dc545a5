"""``cloud-hub demo``: the whole closed loop on this machine, in one command (``make demo``).

Starts an embedded MQTT broker (Mosquitto; amqtt when Mosquitto is absent), the hub with
SQLite (API, ingest, rollout engine, dashboard) and N device processes, trains, rolls out,
drifts part of the fleet, retrains and rolls out again; prints a summary table and writes
``summary.json``, ``timeline.json`` and plots under ``--out``. See ``simulations.demo.runner``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

__all__ = ["register"]


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "demo", help="run the closed loop (train, roll out, drift, retrain) on this machine"
    )
    parser.add_argument("--agents", type=int, default=6, help="device processes (default 6)")
    parser.add_argument(
        "--drifted", type=int, default=3, help="devices at site=plant-3 that drift (>= 3)"
    )
    parser.add_argument("--mqtt-url", help="use this broker instead of an embedded one")
    parser.add_argument(
        "--broker",
        choices=("auto", "amqtt"),
        default="auto",
        help="embedded broker: Mosquitto when installed (auto), or amqtt (pure Python, "
        "MQTT 3.1.1, in its own virtual environment)",
    )
    parser.add_argument("--out", default="demo-out", help="output folder (default demo-out)")
    parser.add_argument("--port", type=int, default=0, help="hub API port (default: a free one)")
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    parser.add_argument(
        "--training-engine",
        choices=("inprocess", "deployment"),
        default="deployment",
        help="deployment (default, the product's path): a SuperLink on the hub and signed "
        "training orders, each device trains as a SuperNode on its own samples over TLS "
        "with SecAgg+; inprocess: a simulation shortcut, Flower's ServerApp/ClientApp in "
        "the hub process fed by the local devices' sample stores",
    )
    parser.set_defaults(func=_demo)


def _demo(args: argparse.Namespace) -> int:
    import logging

    from simulations.demo.report import summary_table
    from simulations.demo.runner import DemoConfig, run_demo

    if not args.verbose:  # progress lines only; the components' INFO logs go quiet
        import flwr.common.logger  # noqa: F401 - configures the "flwr" logger; quiet it after

        logging.getLogger().setLevel(logging.WARNING)
        for name in ("flwr", "cloud_hub", "edge_agent"):
            logging.getLogger(name).setLevel(logging.WARNING)
    config = DemoConfig(
        out_dir=Path(args.out),
        agents=args.agents,
        drifted=args.drifted,
        mqtt_url=args.mqtt_url,
        broker=args.broker,
        port=args.port,
        plots=not args.no_plots,
        training_engine=args.training_engine,
    )
    result = run_demo(config)
    print(summary_table(result.summary))
    recovered = result.summary["accuracy_recovered_pts"]
    return 0 if recovered > 0 else 1

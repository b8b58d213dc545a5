"""``edge-agent run --config FILE``: run the agent until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from pathlib import Path
from typing import Any

from edge_agent.config import load_config

__all__ = ["register"]

log = logging.getLogger(__name__)


def _run(args: argparse.Namespace) -> int:
    if args.serve:
        from edge_agent.device import run_device

        return run_device(
            Path(args.config),
            api_port=args.api_port,
            drift_window=args.drift_window,
            report_interval_s=args.report_interval,
            allow_insecure_training=args.allow_insecure_training,
            exit_with_parent=args.exit_with_parent,
        )
    from edge_agent.agent import EdgeAgent

    config = load_config(Path(args.config))
    agent = EdgeAgent(config)
    stop = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        log.info("signal %d: stopping", signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    log.info(
        "agent %s (%s) starting; broker %s",
        config.device_id,
        config.device_class,
        config.mqtt.endpoint.url,
    )
    agent.run_forever(stop)
    return 0


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "run", help="run the edge agent (OTA, reports; --serve: + predictions, drift, training)"
    )
    parser.add_argument("--config", required=True, help="agent TOML config file")
    parser.add_argument(
        "--serve",
        action="store_true",
        help="also serve predictions (local HTTP API), report telemetry and drift, keep the "
        "sample store and join federated training rounds",
    )
    parser.add_argument("--api-port", type=int, default=8765, help="local API port (0: any)")
    parser.add_argument("--drift-window", type=int, default=200, help="inputs per drift window")
    parser.add_argument("--report-interval", type=float, default=5.0, help="telemetry period (s)")
    parser.add_argument(
        "--allow-insecure-training",
        action="store_true",
        help="accept a plain-text SuperLink in TrainCommands (loopback demos only)",
    )
    parser.add_argument(
        "--exit-with-parent", action="store_true", help="stop when the parent process dies"
    )
    parser.set_defaults(func=_run)

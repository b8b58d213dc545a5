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
    from edge_agent.agent import EdgeAgent

    config = load_config(Path(args.config))
    agent = EdgeAgent(config)
    stop = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        log.info("signal %d: stopping", signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    log.info("agent %s (%s) starting", config.device_id, config.device_class)
    agent.run_forever(stop)
    return 0


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("run", help="run the edge agent (OTA, reports)")
    parser.add_argument("--config", required=True, help="agent TOML config file")
    parser.set_defaults(func=_run)

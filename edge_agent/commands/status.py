"""``edge-agent status``: identity, connection, installed model, runtime, health."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from edge_agent.service.layout import InstallLayout
from edge_agent.service.status import collect_status, render_status

__all__ = ["register"]


def _status(args: argparse.Namespace) -> int:
    status = collect_status(
        InstallLayout(Path(args.prefix).resolve()),
        config_path=args.config,
        connect=not args.no_connect,
        timeout_s=args.timeout,
    )
    if args.json:
        print(json.dumps(status.to_dict(), indent=2, sort_keys=True, default=str))
    else:
        print(render_status(status))
    return 0 if status.healthy else 1


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser("status", help="show identity, connection, model and health")
    p.add_argument("--prefix", default="/", help="install root (default /)")
    p.add_argument("--config", type=Path, default=None, help="config file (default: installed)")
    p.add_argument("--no-connect", action="store_true", help="do not try the broker")
    p.add_argument("--timeout", type=float, default=5.0, help="broker connect timeout (s)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_status)

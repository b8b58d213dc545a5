"""The ``cloud-hub`` command line.

Each command group lives in its own module under ``cloud_hub.commands``; a module exposes
``register(subparsers)`` which adds its parser and sets ``func(args) -> int``.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

# One module per command group; add yours here.
COMMAND_MODULES: tuple[str, ...] = (
    "cloud_hub.commands.keys",
    "cloud_hub.commands.bundle",
    "cloud_hub.commands.publish",
    "cloud_hub.commands.enroll",
    "cloud_hub.commands.simulate",
    "cloud_hub.commands.compress",
    "cloud_hub.commands.serve",
    "cloud_hub.commands.token",
    "cloud_hub.commands.rollout",
    "cloud_hub.commands.demo",
    "cloud_hub.commands.retrain",
    "cloud_hub.commands.fleet_sim",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cloud-hub")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.func(args))
    except Exception as exc:  # the CLI boundary: one clear line, no traceback
        from cloud_hub.errors import HubError
        from shared.errors import FedfleetError

        if isinstance(exc, HubError | FedfleetError):
            print(f"error: {exc}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())

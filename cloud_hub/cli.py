"""The ``cloud-hub`` command line.

Each command group lives in its own module under ``cloud_hub.commands``; a module exposes
``register(subparsers)`` which adds its parser and sets ``func(args) -> int``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from shared.cli import build_parser as _build_parser
from shared.cli import run_cli

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
    return _build_parser("cloud-hub", COMMAND_MODULES)


def main(argv: Sequence[str] | None = None) -> int:
    from cloud_hub.errors import HubError
    from shared.errors import FedfleetError

    return run_cli("cloud-hub", COMMAND_MODULES, (HubError, FedfleetError), argv)


if __name__ == "__main__":
    sys.exit(main())

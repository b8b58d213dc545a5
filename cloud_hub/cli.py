"""The ``cloud-hub`` command line.

Each command group lives in its own module under ``cloud_hub.commands``; a module exposes
``register(subparsers)`` which adds its parser and sets ``func(args) -> int``. Commands that
run the local harness (``demo``, ``fleet-sim``) live in ``simulations.commands``, which sits
on top of the hub: the hub never imports it, it finds them through the ``cloud_hub.commands``
entry-point group that the distribution declares in ``pyproject.toml``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from importlib.metadata import entry_points

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
    "cloud_hub.commands.retrain",
    "cloud_hub.commands.config_reference",
)
PLUGIN_GROUP = "cloud_hub.commands"


def command_modules() -> tuple[str, ...]:
    """The hub's own command modules, then those other installed packages register."""
    plugins = sorted(ep.value for ep in entry_points(group=PLUGIN_GROUP))
    return COMMAND_MODULES + tuple(m for m in plugins if m not in COMMAND_MODULES)


def build_parser() -> argparse.ArgumentParser:
    return _build_parser("cloud-hub", command_modules())


def main(argv: Sequence[str] | None = None) -> int:
    from cloud_hub.errors import HubError
    from shared.errors import FedfleetError

    return run_cli("cloud-hub", command_modules(), (HubError, FedfleetError), argv)


if __name__ == "__main__":
    sys.exit(main())

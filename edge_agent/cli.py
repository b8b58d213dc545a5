"""The ``edge-agent`` command line.

Each command group lives in its own module under ``edge_agent.commands``; a module exposes
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
    "edge_agent.commands.infer",
    "edge_agent.commands.install",
    "edge_agent.commands.run",
    "edge_agent.commands.status",
    "edge_agent.commands.config_reference",
)


def build_parser() -> argparse.ArgumentParser:
    return _build_parser("edge-agent", COMMAND_MODULES)


def main(argv: Sequence[str] | None = None) -> int:
    from edge_agent.errors import AgentError
    from shared.errors import FedfleetError

    return run_cli("edge-agent", COMMAND_MODULES, (AgentError, FedfleetError), argv)


if __name__ == "__main__":
    sys.exit(main())

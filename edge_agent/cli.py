"""The ``edge-agent`` command line.

Each command group lives in its own module under ``edge_agent.commands``; a module exposes
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
    "edge_agent.commands.infer",
    "edge_agent.commands.install",
    "edge_agent.commands.run",
    "edge_agent.commands.status",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edge-agent")
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
        from edge_agent.errors import AgentError
        from shared.errors import FedfleetError

        if isinstance(exc, AgentError | FedfleetError):
            print(f"error: {exc}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())

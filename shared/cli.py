"""The command-line shell both ``cloud-hub`` and ``edge-agent`` are built on.

Each command group lives in its own module; a module exposes ``register(subparsers)``, which
adds its parser and sets ``func(args) -> int``. Errors of the given domain types end the
program with one clear line and exit status 2 (no traceback); anything else is a bug and
raises.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from shared.files import atomic_write

__all__ = ["build_parser", "document_command", "run_cli"]


def build_parser(prog: str, modules: Sequence[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name in modules:
        importlib.import_module(name).register(subparsers)
    return parser


def run_cli(
    prog: str,
    modules: Sequence[str],
    domain_errors: tuple[type[BaseException], ...],
    argv: Sequence[str] | None = None,
) -> int:
    args = build_parser(prog, modules).parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.func(args))
    except domain_errors as exc:  # the CLI boundary: one clear line, no traceback
        print(f"error: {exc}", file=sys.stderr)
        return 2


def document_command(
    name: str, *, help: str, default_output: Path, render: Callable[[], str]
) -> Callable[[argparse._SubParsersAction[argparse.ArgumentParser]], None]:
    """A command module's ``register``: adds the command ``name``, which writes the document
    ``render()`` makes to ``-o FILE`` (default ``default_output``; ``-``: standard output),
    atomically."""

    def write(args: argparse.Namespace) -> int:
        text = render()
        if str(args.output) == "-":
            sys.stdout.write(text)
            return 0
        args.output.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(args.output, text.encode("utf-8"), mode=0o644)
        print(f"wrote {args.output}")
        return 0

    def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
        parser = subparsers.add_parser(name, help=help)
        parser.add_argument(
            "-o", "--output", type=Path, default=default_output, help=f"default {default_output}; -"
        )
        parser.set_defaults(func=write)

    return register

"""Entry point of the ``channels-valkey`` command: the parser, and the dispatch to one module per sub-command."""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Sequence

from channels_valkey.cli.__about__ import __version__
from channels_valkey.cli.commands.versions import DISTRIBUTIONS, installed_versions

__all__ = ["COMMANDS", "DISTRIBUTIONS", "build_parser", "installed_versions", "main"]

#: The sub-commands, each a module of :mod:`channels_valkey.cli.commands`, in the order ``--help`` lists them.
COMMANDS = ("check", "inspect", "top", "serve", "bench", "versions")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser, exposed so that tests and documentation can inspect it."""
    parser = argparse.ArgumentParser(
        prog="channels-valkey",
        description="Tools for the Valkey channel layers of Django Channels.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        module = importlib.import_module(f"channels_valkey.cli.commands.{name}")
        module.register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line tool and return its exit status (2 for a usage error, as argparse does)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    run = getattr(args, "run", None)
    if run is None:
        parser.print_help()
        return 2
    status: int = run(args)
    return status

"""Entry point of the ``channels-valkey`` command."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from importlib import metadata

from channels_valkey.cli.__about__ import __version__

#: The distributions that make up channels-valkey, in dependency order.
DISTRIBUTIONS = (
    "channels-valkey-serializers",
    "channels-valkey-sentinel",
    "channels-valkey-core",
    "channels-valkey-pubsub",
    "channels-valkey",
)


def installed_versions() -> dict[str, str | None]:
    """Map each channels-valkey distribution to its installed version, or None when it is missing."""
    versions: dict[str, str | None] = {}
    for name in DISTRIBUTIONS:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def _print_versions() -> int:
    versions = installed_versions()
    width = max(len(name) for name in versions)
    for name, version in versions.items():
        print(f"{name:<{width}}  {version or 'not installed'}")
    return 0 if all(versions.values()) else 1


def build_parser() -> argparse.ArgumentParser:
    """The argument parser, exposed so that tests and documentation can inspect it."""
    parser = argparse.ArgumentParser(
        prog="channels-valkey",
        description="Tools for the Valkey channel layers of Django Channels.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.add_parser(
        "versions", help="list the installed channels-valkey distributions and their versions"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line tool and return its exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "versions":
        return _print_versions()
    parser.print_help()
    return 2

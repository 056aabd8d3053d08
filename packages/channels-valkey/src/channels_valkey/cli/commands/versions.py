"""``channels-valkey versions``: which of the five distributions are installed, at which version."""

from __future__ import annotations

import argparse
from importlib import metadata
from typing import Any

from channels_valkey.cli.output import render_json

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


def run(args: argparse.Namespace) -> int:
    """Print the versions; exit 1 on a partial install."""
    versions = installed_versions()
    if args.json:
        print(render_json(versions))
    else:
        width = max(len(name) for name in versions)
        for name, version in versions.items():
            print(f"{name:<{width}}  {version or 'not installed'}")
    return 0 if all(versions.values()) else 1


def register(commands: Any) -> None:
    """Add ``versions`` to the sub-commands."""
    parser = commands.add_parser(
        "versions", help="list the installed channels-valkey distributions and their versions"
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.set_defaults(run=run)

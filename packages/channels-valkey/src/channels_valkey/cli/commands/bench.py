"""``channels-valkey bench``: our layers against channels_redis 4 on a running server, with the ratio per case.

Both sides run in this process, on the same server, in the same run, each under a prefix of its own that is
deleted afterwards. The result goes to stdout (a table, or JSON with ``--json``), the progress to stderr, and with
``--plot`` a bar chart of the ratios to a PNG file. The measuring lives in :mod:`channels_valkey.cli.measure`,
imported only when the command runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from channels_valkey.cli.output import render_json, render_table

if TYPE_CHECKING:
    from channels_valkey.cli.measure import Comparison

#: The distributions whose versions a result names: what was compared.
COMPARED = ("channels-valkey-core", "channels-valkey-pubsub", "channels-redis")
TABLE_HEADERS = ("layer", "case", "unit", "ours", "channels_redis", "ours/channels_redis", "ours is")


def png_path(text: str) -> Path:
    """``--plot``: a ``.png`` file in a folder that exists, checked before a minute of measuring."""
    path = Path(text)
    if path.suffix.lower() != ".png":
        raise argparse.ArgumentTypeError(
            f"{text!r} does not end in .png: the chart is written as a PNG image"
        )
    folder = path.parent
    if not folder.is_dir():
        raise argparse.ArgumentTypeError(f"cannot write {text!r}: the folder {str(folder)!r} does not exist")
    return path


def _version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def run(args: argparse.Namespace) -> int:
    """Measure and print the comparison: 0 when done, 1 when the server or a case failed, 2 for a setup error."""
    from channels_valkey.cli import measure
    from channels_valkey.sentinel import HostConfigError

    layers = measure.LAYERS if args.layer == "both" else (args.layer,)
    try:
        measure.require_peer()
        if args.plot is not None:
            measure.require_matplotlib()
        servers = measure.server_hosts(args.hosts)
    except (measure.MissingExtra, HostConfigError) as exc:
        print(f"channels-valkey bench: {exc}", file=sys.stderr)
        return 2
    shown_hosts = [server.describe() for server in servers]  # passwords masked
    sizes = measure.QUICK if args.quick else measure.FULL
    progress = measure.Progress(sys.stderr)
    bench = measure.Bench(args.hosts, sizes, progress)
    try:
        server = measure.server_version(args.hosts)
        comparisons = bench.run(measure.cases_of(layers))
    except measure.BenchError as exc:
        progress.end_line()
        print(f"channels-valkey bench: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        progress.end_line()
        print("channels-valkey bench: interrupted", file=sys.stderr)
        return 130
    versions = {name: _version(name) for name in COMPARED}
    if args.json:
        document = {
            "server": server,
            "hosts": shown_hosts,
            "quick": args.quick,
            "sizes": dataclasses.asdict(sizes),
            "versions": versions,
            "prefixes": bench.prefixes,
            "cases": [comparison.as_dict() for comparison in comparisons],
        }
        print(render_json(document), flush=True)
    else:
        compared = ", ".join(f"{name} {version or 'not installed'}" for name, version in versions.items())
        print(f"{server} at {', '.join(shown_hosts)}; {compared}{'; --quick' if args.quick else ''}\n")
        print(_table(comparisons), flush=True)
    if args.plot is None:
        return 0
    title = f"ours / channels_redis {versions['channels-redis'] or '4'}, on {server}"
    try:
        measure.plot_ratios(comparisons, args.plot, title)
    except OSError as exc:
        print(f"channels-valkey bench: cannot write the chart to {str(args.plot)!r}: {exc}", file=sys.stderr)
        return 1
    print(f"channels-valkey bench: chart written to {args.plot}", file=sys.stderr)
    return 0


def _table(comparisons: list[Comparison]) -> str:
    from channels_valkey.cli.measure import figure_text

    rows = [
        (
            comparison.case.layer,
            comparison.case.name,
            comparison.case.unit,
            figure_text(comparison.ours),
            figure_text(comparison.peer),
            f"{comparison.ratio:.2f}",
            comparison.verdict(),
        )
        for comparison in comparisons
    ]
    return render_table(TABLE_HEADERS, rows)


def register(commands: Any) -> None:
    """Add ``bench`` to the sub-commands."""
    parser = commands.add_parser(
        "bench",
        help="compare the layers with channels_redis 4 on a running server",
        description=(
            "Measure our core and Pub/Sub layers and channels_redis 4's on the same server in one run, and print "
            "the ratio ours / channels_redis for each case. Needs the bench extra: "
            'pip install "channels-valkey[bench]".'
        ),
    )
    parser.add_argument(
        "--hosts",
        nargs="+",
        required=True,
        metavar="URL",
        help="the server(s) to measure on, e.g. valkey://127.0.0.1:6379 (several: sharded, as in CHANNEL_LAYERS)",
    )
    parser.add_argument(
        "--layer",
        choices=("core", "pubsub", "both"),
        default="both",
        help="which layer to measure (default both)",
    )
    parser.add_argument("--quick", action="store_true", help="a few seconds: fewer messages, rougher figures")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument(
        "--plot", type=png_path, metavar="FILE.png", help="also draw the ratios as a bar chart"
    )
    parser.set_defaults(run=run)

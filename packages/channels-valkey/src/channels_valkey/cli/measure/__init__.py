"""The benchmark behind ``channels-valkey bench``: our layers against channels_redis 4, case by case.

``cases`` says what is measured, ``sides`` makes the two layers alike, ``runner`` runs the cases and cleans up,
``results`` holds the figures, ``progress`` reports on stderr, ``plot`` draws the ratios. ``MESSAGE`` and ``GROUP``,
what the flows send, are exported for the suites in benchmarks/, which time the same message.
"""

from channels_valkey.cli.measure.cases import CASES, FULL, QUICK, Case, Sizes, cases_of
from channels_valkey.cli.measure.exceptions import (
    INSTALL_HINT,
    BenchError,
    CaseFailed,
    MissingExtra,
    Unreachable,
)
from channels_valkey.cli.measure.flows import GROUP, MESSAGE
from channels_valkey.cli.measure.plot import BETTER_COLOUR, WORSE_COLOUR, plot_ratios, require_matplotlib
from channels_valkey.cli.measure.progress import Progress
from channels_valkey.cli.measure.results import Comparison, figure_text
from channels_valkey.cli.measure.runner import PREFIX_ROOT, Bench, server_hosts, server_version
from channels_valkey.cli.measure.sides import LAYERS, OURS, PEER, SIDES, require_peer

__all__ = [
    "BETTER_COLOUR",
    "CASES",
    "FULL",
    "GROUP",
    "INSTALL_HINT",
    "LAYERS",
    "MESSAGE",
    "OURS",
    "PEER",
    "PREFIX_ROOT",
    "QUICK",
    "SIDES",
    "WORSE_COLOUR",
    "Bench",
    "BenchError",
    "Case",
    "CaseFailed",
    "Comparison",
    "MissingExtra",
    "Progress",
    "Sizes",
    "Unreachable",
    "cases_of",
    "figure_text",
    "plot_ratios",
    "require_matplotlib",
    "require_peer",
    "server_hosts",
    "server_version",
]

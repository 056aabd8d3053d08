"""The errors of ``channels-valkey bench``, each with a message meant for the person who ran it."""

from __future__ import annotations

#: What to install for the comparison and the chart.
INSTALL_HINT = 'pip install "channels-valkey[bench]"'


class BenchError(RuntimeError):
    """The benchmark could not run or finish; the message says why."""


class MissingExtra(BenchError):
    """A package of the ``bench`` extra (channels_redis, matplotlib) is not installed."""

    def __init__(self, package: str, purpose: str) -> None:
        super().__init__(f"{purpose}, but {package} is not installed: {INSTALL_HINT}")
        self.package = package


class Unreachable(BenchError):
    """The server to measure against does not answer."""


class CaseFailed(BenchError):
    """A case failed on one side: an error from the layer or the server, a timeout, or a wrong delivery."""

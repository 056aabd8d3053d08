"""A subscriber's Pub/Sub connection as its listener holds it, and how a write on it fails when it is gone.

:class:`Link` lives as long as one connection of a :class:`~channels_valkey.pubsub.subscriber.Subscriber`: the
commands written on it (whose replies come back in order), when it last answered, and the keep-alive's ``PING``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from valkey import exceptions as valkey_errors
from valkey.asyncio.connection import AbstractConnection

from channels_valkey.pubsub.replies import SentCommands
from channels_valkey.sentinel import classify


@dataclass(eq=False)
class Link:
    """The live connection and what was written on it."""

    connection: AbstractConnection
    sent: SentCommands = field(default_factory=SentCommands)
    last_read: float = field(default_factory=time.monotonic)
    ping_sent: float | None = None
    #: Why the keep-alive task closed the connection, reported instead of the read's error it causes.
    failure: BaseException | None = None


def lost_at_write(error: Exception) -> bool:
    """Whether a write on the Pub/Sub connection failed because the connection is gone, which the listener's next
    read reports too. valkey-py raises AttributeError when the connection is closed while the write waits for its
    turn, uvloop RuntimeError when the transport closed before the write."""
    if isinstance(error, RuntimeError):
        return classify(error) is not None
    return isinstance(
        error, valkey_errors.ConnectionError | valkey_errors.TimeoutError | OSError | AttributeError
    )


def text(value: object) -> str:
    """A name or kind of a reply as text, whether the connection gave it as bytes or as a string."""
    return value.decode() if isinstance(value, bytes) else str(value)

"""Errors of the connection package; the connection ones are valkey ConnectionErrors, so handlers keep working."""

from __future__ import annotations

import valkey.exceptions


class HostConfigError(ValueError):
    """A ``hosts`` setting that cannot be used; the message names the entry (passwords masked) and the fix."""


class SentinelDiscoveryError(valkey.exceptions.ConnectionError):
    """No Sentinel listed the primaries it monitors, so the shards of a ``services: []`` entry are unknown.

    It is a valkey ``ConnectionError`` because the usual cause is an unreachable or misconfigured Sentinel,
    and code that retries connection failures should retry this one too.
    """


class ShardUnavailable(valkey.exceptions.ConnectionError):
    """A shard that cannot be used at all (never reached, credentials refused, TLS failed), by name."""

    def __init__(self, shard: str, cause: BaseException) -> None:
        super().__init__(f"{shard} is unavailable: {type(cause).__name__}: {cause}")
        self.shard = shard
        self.cause = cause


class CommandNotSent(valkey.exceptions.ConnectionError):
    """A command that was never written because no server to send it to was reachable (for example no node
    of a cluster answered for its slot map); always safe to retry, whatever the command does."""


class ReplyLost(valkey.exceptions.ConnectionError):
    """A write whose connection failed after it was sent: it may have run, and it was not sent again.

    Raised by the layers for sends, where a second try could deliver a message twice: a receiver may already have
    taken the first copy, so nothing on the server shows that it arrived. The caller decides whether to send again.
    """


class MessageTooLarge(ValueError):
    """A message whose serialized bytes are over the layer's ``max_message_bytes``; raised before anything of the
    call is written, naming the destination, the size and the limit."""

    def __init__(self, destination: str, size: int, limit: int) -> None:
        super().__init__(
            f"message for {destination} is {size:,} bytes serialized, over max_message_bytes ({limit:,}); "
            "nothing was sent"
        )
        self.destination = destination
        self.size = size
        self.limit = limit

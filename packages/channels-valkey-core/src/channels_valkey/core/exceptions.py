"""Errors of the core layer; each also subclasses the built-in type channels-valkey 0.3 raised in its place."""

from __future__ import annotations


class ForeignChannelError(ValueError, AssertionError):
    """``receive()`` on a process channel this layer instance did not make.

    A process channel's messages travel in a server queue that only the instance that made the channel reads
    (``name!`` with that instance's ``client_prefix``); receiving from another's would block, or take that
    process's messages. channels-valkey 0.3 refused it with an ``AssertionError``, so this is one too, and a
    ``ValueError``.
    """

    def __init__(self, channel: str, client_prefix: str) -> None:
        super().__init__(
            f"cannot receive from process channel {channel!r}: it was not made by this layer instance "
            f"(its channels look like '<prefix>.{client_prefix}!<suffix>', from new_channel()); a process channel "
            "is received only by the instance that made it"
        )
        self.channel = channel

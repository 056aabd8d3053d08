"""How connections behave when the network or the server misbehaves: timeouts, keepalive, health checks, retries.

Every default is chosen for a channel layer: a consumer should ride out a Sentinel failover (about two seconds)
without seeing an error, and a misconfigured host should fail at once rather than retry for minutes.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from valkey.backoff import EqualJitterBackoff


@dataclass(frozen=True)
class ResiliencePolicy:
    """Timeouts and retry budget for every connection the layers open; override any field with ``replace``.

    ``connect_timeout``: seconds to open a connection (TCP, TLS handshake, AUTH); always set, because a TLS
    client talking to a plaintext port otherwise waits forever.
    ``socket_timeout``: seconds to wait for a reply to an ordinary command.
    ``blocking_margin``: blocking commands (``BZPOPMIN`` with a block time) read for their block time plus this.
    ``keepalive``: TCP keepalive, so that a peer that vanished without a FIN is noticed.
    ``health_check_interval``: a pooled connection idle for longer than this is PINGed before it is used again
    (managed services drop idle connections silently).
    ``retry_attempts`` / ``retry_deadline``: at most this many retries, and none started after this many seconds
    from the first attempt; enough to outlast a Sentinel failover.
    ``backoff_base`` / ``backoff_cap``: exponential backoff with jitter between retries, in seconds; the cap
    bounds how late a retry notices that the new primary is up.
    ``receipts``: queue readers pop with a receipt on the server and wait for messages through client-side
    tracking, so that a connection cut with a pop's reply on the wire loses nothing (receipts.py). False: they
    pop with ``BZMPOP`` as channels-valkey 0.3 did, which saves a waiting receive one round trip (the tracking
    push, then the pop) and loses what a pop carried when its connection is cut with the reply on the wire.
    """

    connect_timeout: float = 5.0
    socket_timeout: float = 5.0
    blocking_margin: float = 5.0
    keepalive: bool = True
    health_check_interval: float = 15.0
    retry_attempts: int = 20
    retry_deadline: float = 15.0
    backoff_base: float = 0.02
    backoff_cap: float = 0.5
    receipts: bool = True

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.type == "bool":
                if not isinstance(value, bool):
                    raise TypeError(f"ResiliencePolicy.{field.name} must be True or False, not {value!r}")
            elif isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise ValueError(f"ResiliencePolicy.{field.name} must be a number >= 0, not {value!r}")
        if self.connect_timeout == 0 or self.socket_timeout == 0:
            raise ValueError(
                "ResiliencePolicy timeouts must be > 0: a connection without a timeout can hang forever"
            )

    def replace(self, **changes: Any) -> ResiliencePolicy:
        """A copy with some fields changed (validated like the original)."""
        return dataclasses.replace(self, **changes)

    def connection_options(self, *, block_seconds: float | None = None) -> dict[str, Any]:
        """Keyword arguments for a valkey-py connection pool; ``block_seconds`` for pools of blocking commands."""
        read_timeout = self.socket_timeout if block_seconds is None else block_seconds + self.blocking_margin
        return {
            "socket_connect_timeout": self.connect_timeout,
            "socket_timeout": read_timeout,
            "socket_keepalive": self.keepalive,
            "health_check_interval": self.health_check_interval,
        }

    def backoff(self) -> EqualJitterBackoff:
        """A backoff schedule for one retried call: valkey-py's exponential backoff with equal jitter."""
        return EqualJitterBackoff(cap=self.backoff_cap, base=self.backoff_base)


#: The policy used when a layer is given none.
DEFAULT_POLICY = ResiliencePolicy()

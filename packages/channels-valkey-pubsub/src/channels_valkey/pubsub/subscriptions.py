"""What the loop state and the subscriptions of one shard expect of each other.

The loop state (``loop_state.py``) holds one :class:`Subscriptions` per shard: a plain
:class:`~channels_valkey.pubsub.subscriber.Subscriber`, or on a Valkey Cluster a
:class:`~channels_valkey.pubsub.cluster_subscriber.ClusterSubscriber` that spreads the names over the nodes. Each
reports to a :class:`Sink`: the loop state, or for the node subscribers of a cluster, their cluster subscriber.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from typing import Protocol


class Subscriptions(Protocol):
    """One shard's subscriptions on one event loop, as the loop state uses them: a ``Subscriber``, or on a
    Valkey Cluster a ``ClusterSubscriber`` that spreads them over the nodes."""

    @property
    def index(self) -> int: ...

    @property
    def wanted(self) -> set[str]: ...

    @property
    def confirmed(self) -> set[str]: ...

    @property
    def live(self) -> bool: ...

    @property
    def connections_made(self) -> int: ...

    async def subscribe(self, names: Iterable[str], *, wait: bool) -> None: ...

    async def unsubscribe(self, names: Iterable[str]) -> None: ...

    async def aclose(self) -> None: ...


class Sink(Protocol):
    """Where subscriptions report what arrives and what happens to their connections.

    ``names`` are the subscribed names a notice is about: the local channels they reach get it.
    """

    def on_message(self, name: str, data: bytes) -> None: ...

    def on_down(self, source: Subscriptions, names: Collection[str]) -> None: ...

    def on_restored(self, source: Subscriptions, names: Collection[str]) -> None: ...

    def on_failed(self, source: Subscriptions, names: Collection[str], error: BaseException) -> None: ...

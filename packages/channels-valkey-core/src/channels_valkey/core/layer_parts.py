"""What the core layer's mixins (``bulk.BulkSends``, ``groups.GroupMethods``) use of the layer they are mixed into.

Declared for the type checker only: the attributes are set, and the methods written, by
:class:`~channels_valkey.core.ValkeyChannelLayer`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from channels_valkey.core.groups import MemberGuesses
    from channels_valkey.core.rotation import SendRotation
    from channels_valkey.sentinel import (
        ConnectionManager,
        DropCounters,
        MessageCounts,
        ScoreClock,
        ShardRing,
        SyncLayer,
    )


class LayerParts:
    """The layer's settings, state and helpers a mixin of the core layer may use."""

    if TYPE_CHECKING:
        cluster: bool
        expiry: int
        group_expiry: int
        counters: DropCounters
        _connections: ConnectionManager
        _counts: MessageCounts
        _rotation: SendRotation
        _clock: ScoreClock
        _guesses: MemberGuesses

        def get_capacity(self, channel: str) -> int: ...
        def _payload(self, message: dict[str, Any], kind: str, name: str) -> bytes: ...
        def _hand_off_to(self) -> SyncLayer | None: ...
        def queue_key(self, channel: str) -> str: ...
        def group_key(self, group: str) -> str: ...
        async def shard_ring(self) -> ShardRing: ...
        @staticmethod
        def _shard_of_channel(ring: ShardRing, channel: str) -> int: ...

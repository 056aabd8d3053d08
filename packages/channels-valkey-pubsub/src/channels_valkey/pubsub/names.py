"""Names: the server names each channel and group maps to (the checks of the names are the sentinel package's).

The Pub/Sub names are channels-valkey 0.3's (and channels_redis 4's), so old and new processes meet on them: a
channel is published and subscribed under its own name, a group under ``{prefix}__group__{group}``. Worker queues
are new and live under ``{prefix}__worker__{channel}``, a key no 0.3 process ever touches; on a Valkey Cluster the
channel part is a hash tag, ``{prefix}__worker__{{channel}}``, so a queue lives in the slot of its channel's name.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from channels_valkey.pubsub.worker_queues import WorkerQueues

# What the new_channel() of channels-valkey 0.3 and channels_redis 4 appends to the layer and channel prefixes.
_PEER_PROCESS_SUFFIX = re.compile(r"[0-9a-f]{32}", re.ASCII)


def group_channel(prefix: str, group: str) -> str:
    """The Pub/Sub channel of ``group`` (channels-valkey 0.3's name for it)."""
    return f"{prefix}__group__{group}"


def worker_queue(prefix: str, channel: str, *, cluster: bool = False) -> str:
    """The sorted set that holds the messages of the normal channel ``channel`` (tagged on a cluster)."""
    head, tail = worker_queue_layout(prefix, cluster=cluster)
    return head + channel + tail


def worker_queue_layout(prefix: str, *, cluster: bool = False) -> tuple[str, str]:
    """``(head, tail)`` around the channel name in every worker queue key of ``prefix``."""
    if cluster:
        return f"{prefix}__worker__{{", "}"
    return f"{prefix}__worker__", ""


def worker_queues(prefix: str) -> str:
    """What the name of every worker queue of ``prefix`` starts with (``flush`` deletes them)."""
    return f"{prefix}__worker__"


def is_peer_process_channel(prefix: str, channel: str) -> bool:
    """Whether ``channel`` has the form of a name made by a 0.3 / channels_redis ``new_channel()``.

    Those names carry no ``!`` (``{prefix}specific.`` + 32 hex digits), but they belong to one process that
    receives them on Pub/Sub: sending to them through a worker queue would never reach it.
    """
    return (
        channel.startswith(prefix)
        and len(channel) >= len(prefix) + 32
        and _PEER_PROCESS_SUFFIX.fullmatch(channel, len(channel) - 32) is not None
    )


class ServerNames:
    """What the layer tells tools about its names on the server (``channels-valkey inspect`` reads them)."""

    prefix: str
    _queues: WorkerQueues

    def queue_key(self, channel: str) -> str:
        """The server key of the worker queue of the normal channel ``channel``."""
        return self._queues.key(channel)

    @property
    def queue_key_layout(self) -> tuple[str, str]:
        """``(head, tail)``: every key :meth:`queue_key` makes is ``head + channel + tail``, so tools can find worker
        queues by ``SCAN MATCH head*`` and read the channel back from a key."""
        return self._queues.layout

    def group_channel_name(self, group: str) -> str:
        """The Pub/Sub channel ``group``'s members subscribe to (0.3's name), for counting them with ``PUBSUB
        NUMSUB`` (``SHARDNUMSUB`` on a cluster); the name is not checked."""
        return group_channel(self.prefix, group)

    @property
    def group_channel_layout(self) -> tuple[str, str]:
        """``(head, tail)``: every name :meth:`group_channel_name` makes is ``head + group + tail``, so tools can
        tell group channels from the others among ``PUBSUB CHANNELS head*``."""
        return group_channel(self.prefix, ""), ""

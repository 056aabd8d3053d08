"""Names: strict checks of channel and group names and messages, and the server names each one maps to.

The Pub/Sub names are channels-valkey 0.3's (and channels_redis 4's), so old and new processes meet on them: a
channel is published and subscribed under its own name, a group under ``{prefix}__group__{group}``. Worker queues
are new and live under ``{prefix}__worker__{channel}``, a key no 0.3 process ever touches; on a Valkey Cluster the
channel part is a hash tag, ``{prefix}__worker__{{channel}}``, so a queue lives in the slot of its channel's name.
"""

from __future__ import annotations

import re

MAX_NAME_LENGTH = 100

# Anchored at both ends and ASCII-only: Channels' own check ends in "$", which lets a trailing newline through,
# and its "\w" after "!" takes any Unicode letter.
_CHANNEL = re.compile(r"[a-zA-Z0-9\-_.]+(![a-zA-Z0-9\-_.]*)?", re.ASCII)
_GROUP = re.compile(r"[a-zA-Z0-9\-_.]+", re.ASCII)
_ALLOWED = f"at most {MAX_NAME_LENGTH - 1} ASCII letters, digits, hyphens, underscores or periods"
# What the new_channel() of channels-valkey 0.3 and channels_redis 4 appends to the layer and channel prefixes.
_PEER_PROCESS_SUFFIX = re.compile(r"[0-9a-f]{32}", re.ASCII)


def check_channel(name: object) -> str:
    """``name`` if it is a valid channel name; otherwise ``TypeError`` quoting it."""
    if not isinstance(name, str) or len(name) >= MAX_NAME_LENGTH or not _CHANNEL.fullmatch(name):
        raise TypeError(f"invalid channel name {name!r}: a channel name is {_ALLOWED}, with at most one '!'")
    return name


def check_group(name: object) -> str:
    """``name`` if it is a valid group name; otherwise ``TypeError`` quoting it."""
    if not isinstance(name, str) or len(name) >= MAX_NAME_LENGTH or not _GROUP.fullmatch(name):
        raise TypeError(f"invalid group name {name!r}: a group name is {_ALLOWED}")
    return name


def check_message(message: object) -> None:
    """Raise unless ``message`` is a dict the layer may send (``__asgi_channel__`` is reserved for the layers)."""
    if not isinstance(message, dict):
        raise TypeError(f"message must be a dict, not {type(message).__name__} {message!r:.80}")
    if "__asgi_channel__" in message:
        raise ValueError(
            "message must not contain the key '__asgi_channel__', which the channel layers reserve"
        )


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

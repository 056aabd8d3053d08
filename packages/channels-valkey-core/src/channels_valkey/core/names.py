"""Channel and group names and messages: strict validation, and the keys names map to on the server.

The key layout is channels-valkey 0.3's (and channels_redis 4's), so a mixed fleet shares queues and groups:
a channel's queue is ``{prefix}{channel}``, every ``name!suffix`` process channel of a process shares the queue
``{prefix}name!``, and a group is ``{prefix}:group:{group}``.
"""

from __future__ import annotations

import re

MAX_NAME_LENGTH = 100

# Anchored at both ends (Channels' own check uses "$", which lets a trailing newline through) and ASCII-only
# (its "\w" after the "!" also accepts any Unicode letter, making names longer in bytes than they look).
_CHANNEL = re.compile(r"[a-zA-Z0-9\-_.]+(![a-zA-Z0-9\-_.]*)?", re.ASCII)
_GROUP = re.compile(r"[a-zA-Z0-9\-_.]+", re.ASCII)
_RULE = f"at most {MAX_NAME_LENGTH - 1} ASCII letters, digits, hyphens, underscores or periods"


def check_channel(name: object) -> str:
    """Return ``name`` if it is a valid channel name, else raise ``TypeError`` naming it."""
    if not isinstance(name, str) or len(name) >= MAX_NAME_LENGTH or not _CHANNEL.fullmatch(name):
        raise TypeError(f"invalid channel name {name!r}: a channel name is {_RULE}, with at most one '!'")
    return name


def check_group(name: object) -> str:
    """Return ``name`` if it is a valid group name, else raise ``TypeError`` naming it."""
    if not isinstance(name, str) or len(name) >= MAX_NAME_LENGTH or not _GROUP.fullmatch(name):
        raise TypeError(f"invalid group name {name!r}: a group name is {_RULE}")
    return name


def check_message(message: object) -> None:
    """Raise unless ``message`` is a dict a layer may send (``__asgi_channel__`` is the layer's own key)."""
    if not isinstance(message, dict):
        raise TypeError(f"message must be a dict, not {type(message).__name__}")
    if "__asgi_channel__" in message:
        raise ValueError("message must not contain the reserved key '__asgi_channel__'")


def non_local_name(channel: str) -> str:
    """The part of a process channel ``name!suffix`` up to and including the ``!`` (the channel itself otherwise)."""
    bang = channel.find("!")
    return channel if bang < 0 else channel[: bang + 1]


def is_process_channel(channel: str) -> bool:
    return "!" in channel

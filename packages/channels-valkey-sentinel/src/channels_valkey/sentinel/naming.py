"""Channel and group names and messages: the strict checks both channel layers make before anything is sent.

Both layers accept exactly the same names, so a consumer that works on one works on the other, and every bad name
or message fails at the call with an exception quoting it. Where a name then lives on the server is each layer's own
business (its ``names.py`` or key methods); process channels (``name!suffix``) mean the same in both.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable

__all__ = [
    "MAX_NAME_LENGTH",
    "check_channel",
    "check_group",
    "check_message",
    "is_process_channel",
    "non_local_name",
]

#: Names must be shorter than this (at most 99 characters), as Channels requires.
MAX_NAME_LENGTH = 100

# Anchored at both ends and ASCII-only: Channels' own check ends in "$", which lets a trailing newline through,
# and its "\w" after "!" takes any Unicode letter (making names longer in bytes than they look).
_CHANNEL = re.compile(r"[a-zA-Z0-9\-_.]+(![a-zA-Z0-9\-_.]*)?", re.ASCII)
_GROUP = re.compile(r"[a-zA-Z0-9\-_.]+", re.ASCII)
_ALLOWED = f"at most {MAX_NAME_LENGTH - 1} ASCII letters, digits, hyphens, underscores or periods"


def check_channel(name: object) -> str:
    """``name`` if it is a valid channel name; otherwise ``TypeError`` quoting it (as Channels raises)."""
    if type(name) is str:
        if _is_channel_name(name):
            return name
    elif isinstance(name, str) and _valid_channel_name(name):
        return name  # a str subclass may hash and compare as it likes: checked without the cache
    raise TypeError(f"invalid channel name {name!r}: a channel name is {_ALLOWED}, with at most one '!'")


def _valid_channel_name(name: str) -> bool:
    return len(name) < MAX_NAME_LENGTH and _CHANNEL.fullmatch(name) is not None


#: :func:`_valid_channel_name`, remembered: a process sends to the same channels over and over, and the match takes
#: about half a microsecond, as long as the rest of a send's checks together.
_is_channel_name = functools.lru_cache(maxsize=4096)(_valid_channel_name)


def check_group(name: object) -> str:
    """``name`` if it is a valid group name; otherwise ``TypeError`` quoting it (as Channels raises)."""
    if not isinstance(name, str) or len(name) >= MAX_NAME_LENGTH or not _GROUP.fullmatch(name):
        raise TypeError(f"invalid group name {name!r}: a group name is {_ALLOWED}")
    return name


def lines_pattern(check: Callable[[object], str]) -> re.Pattern[str] | None:
    """For :func:`check_channel` or :func:`check_group`: a pattern that matches a whole string of names, each
    followed by a newline, when every name passes ``check``; None for another check.

    A bulk send checks thousands of names with one match of their join instead of a call each. A newline is in no
    valid name, but a name holding one makes two lines: the caller also counts the newlines.
    """
    return _LINES.get(check)


def check_message(message: object) -> None:
    """Raise unless ``message`` is a dict a layer may send.

    ``__asgi_channel__`` is reserved: the layers put the destination of a process channel's message there, and a
    message carrying its own would be delivered to the wrong channel.
    """
    if not isinstance(message, dict):
        raise TypeError(f"message must be a dict, not {type(message).__name__} {message!r:.80}")
    if "__asgi_channel__" in message:
        raise ValueError(
            "message must not contain the key '__asgi_channel__', which the channel layers reserve"
        )


# Each line at most MAX_NAME_LENGTH - 1 characters (the lookahead), then a name of its kind.
_LINES: dict[Callable[[object], str], re.Pattern[str]] = {
    check: re.compile(rf"(?:(?=[^\n]{{1,{MAX_NAME_LENGTH - 1}}}\n)(?:{pattern.pattern})\n)*", re.ASCII)
    for check, pattern in ((check_channel, _CHANNEL), (check_group, _GROUP))
}


def non_local_name(channel: str) -> str:
    """The part of a process channel ``name!suffix`` up to and including the ``!`` (the channel itself otherwise).

    Every process channel of one process shares that part, which is what its messages are routed by.
    """
    bang = channel.find("!")
    return channel if bang < 0 else channel[: bang + 1]


def is_process_channel(channel: str) -> bool:
    """Whether ``channel`` is a process channel (``name!suffix``): one only the process that made it receives."""
    return "!" in channel

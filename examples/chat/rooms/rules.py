"""What the chat accepts from a visitor: room names, author names and message text, checked in one place.

The page, the room view and the consumer all use these checks, so a bad value gets the same explanation
wherever it is typed.
"""

from __future__ import annotations

import re
from typing import Any

#: Every room is the Channels group ``chat.<room>``.
GROUP_PREFIX = "chat."
#: Channels group names are shorter than 100 characters; the room keeps what the prefix leaves.
MAX_ROOM_LENGTH = 99 - len(GROUP_PREFIX)
MAX_AUTHOR_LENGTH = 32
MAX_TEXT_LENGTH = 500

# The characters a Channels group name may hold, so every valid room maps to a valid group.
_ROOM = re.compile(rf"[A-Za-z0-9_.\-]{{1,{MAX_ROOM_LENGTH}}}", re.ASCII)
ROOM_RULE = f"1 to {MAX_ROOM_LENGTH} ASCII letters, digits, hyphens, underscores or periods"


class InvalidInput(ValueError):
    """A value a visitor sent that the chat refuses; the message says what would be accepted."""


def check_room(name: str) -> str:
    """Return ``name`` if it can name a room, else raise :class:`InvalidInput` naming it."""
    if not _ROOM.fullmatch(name):
        raise InvalidInput(f"invalid room name {name!r}: a room name is {ROOM_RULE}")
    return name


def group_for(room: str) -> str:
    """The Channels group every connection to ``room`` joins."""
    return GROUP_PREFIX + check_room(room)


def check_chat_message(content: Any) -> tuple[str, str]:
    """Return ``(author, text)`` of a ``{"type": "message", "author": ..., "text": ...}`` frame, stripped.

    Raises :class:`InvalidInput` for anything else, naming the field at fault.
    """
    if not isinstance(content, dict):
        raise InvalidInput(f"a frame must be a JSON object, not {type(content).__name__}")
    if content.get("type") != "message":
        raise InvalidInput(f'unknown frame type {content.get("type")!r}: send {{"type": "message", ...}}')
    author = _text_field(content, "author", MAX_AUTHOR_LENGTH)
    text = _text_field(content, "text", MAX_TEXT_LENGTH)
    return author, text


def _text_field(content: dict[str, Any], field: str, limit: int) -> str:
    value = content.get(field)
    if not isinstance(value, str):
        raise InvalidInput(f"{field!r} must be a string, got {type(value).__name__}")
    value = value.strip()
    if not value:
        raise InvalidInput(f"{field!r} must not be empty")
    if len(value) > limit:
        raise InvalidInput(f"{field!r} is {len(value)} characters long; the limit is {limit}")
    return value

"""Sample messages shared by the serializer tests."""

from __future__ import annotations

from typing import Any

#: A dict of every value type the channels spec allows, nested, including the edges of each type.
EVERY_TYPE: dict[str, Any] = {
    "type": "chat.message",
    "__asgi_channel__": "specific.a1b2c3!d4e5f6",
    "text": "grüße, 世界, emoji \U0001f600",
    "empty_text": "",
    "bytes": b"\x00\x01\xfe\xff" * 8,
    "empty_bytes": b"",
    "small": 7,
    "negative": -(2**63),
    "large": 2**64 - 1,
    "float": 3.25,
    "infinity": float("inf"),
    "true": True,
    "false": False,
    "none": None,
    "list": [1, "two", b"three", [4.5, None], {"five": 5}],
    "empty_list": [],
    "dict": {"nested": {"deeper": [b"\x10", {"deepest": True}]}},
    "empty_dict": {},
}


def without_bytes(value: Any) -> Any:
    """``value`` with every bytes value dropped: what the peers' JSON serializer can carry."""
    if isinstance(value, dict):
        return {key: without_bytes(item) for key, item in value.items() if not isinstance(item, bytes)}
    if isinstance(value, list):
        return [without_bytes(item) for item in value if not isinstance(item, bytes)]
    return value

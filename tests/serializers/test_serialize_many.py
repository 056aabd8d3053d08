"""``serialize_many``, the bulk sends' serializer pass: the bytes ``serialize`` gives, message for message, whatever
shortcut it takes (one packer, one encoding of a message object given again right after itself)."""

from __future__ import annotations

from typing import Any

import pytest

from channels_valkey.serializers import JSONSerializer, MessageEncodeError, MsgPackSerializer, registry


class _Ordered(dict):  # type: ignore[type-arg]
    """A dict subclass: still a message."""


def _messages(every_type: dict[str, Any]) -> list[Any]:
    shared = {"type": "room.message", "text": "to many rooms"}
    return [
        every_type,
        shared,
        shared,
        shared,
        {"type": "one", "n": 1},
        shared,  # again, after another message
        _Ordered(type="sub", n=2),
        {},
        every_type,
    ]


@pytest.mark.parametrize("fmt", ["msgpack", "json"])
def test_the_bytes_are_those_of_serialize_one_by_one(fmt: str, every_type: dict[str, Any]) -> None:
    serializer = registry.get_serializer(fmt)
    messages = _messages(every_type)
    assert serializer.serialize_many(messages) == [serializer.serialize(message) for message in messages]
    assert serializer.serialize_many([]) == []


@pytest.mark.parametrize(
    "settings",
    [
        {"random_prefix_length": 12},
        {"symmetric_encryption_keys": ["k"]},
        {"symmetric_encryption_keys": ["k"], "random_prefix_length": 3},
    ],
)
def test_with_a_random_prefix_or_encryption_each_message_gets_its_own(settings: dict[str, Any]) -> None:
    """As sent one by one: the same dict three times is three different byte strings, each read back."""
    serializer = MsgPackSerializer(**settings)
    shared = {"type": "room.message", "n": 7}
    encoded = serializer.serialize_many([shared, shared, shared])
    assert len(set(encoded)) == 3
    assert [serializer.deserialize(data) for data in encoded] == [shared] * 3


def test_a_subclass_overriding_serialize_or_as_bytes_is_called_for_every_message() -> None:
    calls: list[str] = []

    class Serializing(MsgPackSerializer):
        def serialize(self, message: dict[str, Any]) -> bytes:
            calls.append("serialize")
            return super().serialize(message)

    class Encoding(JSONSerializer):
        def as_bytes(self, message: Any, *args: Any, **kwargs: Any) -> bytes:
            calls.append("as_bytes")
            return JSONSerializer.as_bytes(message, *args, **kwargs)

    shared = {"type": "x"}
    for serializer in (Serializing(), Encoding()):
        assert serializer.serialize_many([shared, shared]) == [serializer.serialize(shared)] * 2
    assert calls == ["serialize"] * 3 + ["as_bytes"] * 3


@pytest.mark.parametrize("fmt", ["msgpack", "json"])
@pytest.mark.parametrize("bad", [None, ["type"], {"type": "x", "value": object()}])
def test_a_bad_message_raises_what_serialize_raises(fmt: str, bad: Any) -> None:
    serializer = registry.get_serializer(fmt)
    with pytest.raises(MessageEncodeError) as alone:
        serializer.serialize(bad)
    with pytest.raises(MessageEncodeError) as in_bulk:
        serializer.serialize_many([{"type": "fine"}, bad])
    assert str(in_bulk.value) == str(alone.value)

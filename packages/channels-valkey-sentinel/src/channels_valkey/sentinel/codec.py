"""``MessageCodec``: a layer's serializer together with what the layer does with bytes it cannot read.

A receiving layer must never fail on one bad message: bytes written by a stranger, truncated, or encrypted with a
key it does not hold are skipped, counted in the layer's ``DropCounters`` and logged, and the next message is
delivered. Both layers do that the same way through this class. The serializer is anything with ``serialize`` and
``deserialize``, so this package needs none of channels-valkey-serializers; the layers pass themselves, so that a
subclass overriding ``serialize``/``deserialize`` (which channels-valkey 0.3 allowed) is used for every message.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from channels_valkey.sentinel.counters import DropCounters
from channels_valkey.sentinel.exceptions import MessageTooLarge

__all__ = ["MessageCodec", "MessageSerializer", "SerializerMethods"]


class MessageSerializer(Protocol):
    """What a codec needs of a serializer: a message to bytes and back.

    ``deserialize`` raises ``ValueError`` or ``TypeError`` on bytes it cannot read (channels-valkey-serializers'
    ``MessageDecodeError`` is a ``ValueError``).
    """

    def serialize(self, message: dict[str, Any], /) -> bytes: ...

    def deserialize(self, message: bytes, /) -> dict[str, Any]: ...


class MessageCodec:
    """Encode messages for one layer and decode what it reads, counting and logging what cannot be read."""

    def __init__(self, serializer: MessageSerializer, counters: DropCounters, logger: logging.Logger) -> None:
        self.serializer = serializer
        self.counters = counters
        self.logger = logger
        # Bound once: encoding and decoding pay no attribute lookups.
        #: The bytes to store or publish for a message; raises what the serializer raises for a bad message.
        self.encode: Callable[[dict[str, Any]], bytes] = _method(serializer, "serialize")
        #: The message stored as some bytes; raises ``ValueError`` / ``TypeError`` when they cannot be read.
        self.read: Callable[[bytes], dict[str, Any]] = _method(serializer, "deserialize")

    def decode(self, data: bytes, what: str | None = None) -> dict[str, Any] | None:
        """The message stored as ``data``, or None when it cannot be read: then counted as ``undecodable`` and
        logged, naming ``what`` it was for (a channel) when given."""
        try:
            return self.read(data)
        except (ValueError, TypeError) as error:
            self.counters.undecodable += 1
            if what is None:
                self.logger.warning("skipped a message that cannot be read: %s", error)
            else:
                self.logger.warning("skipped a message for %s that cannot be read: %s", what, error)
            return None


def _method(serializer: MessageSerializer, name: str) -> Callable[..., Any]:
    """``serializer``'s method ``name``; for a layer that keeps :class:`SerializerMethods`' own, which only passes
    the call on to the layer's ``_serializer``, that serializer's method: a call less per message."""
    target: object = serializer
    if (
        isinstance(serializer, SerializerMethods)
        and getattr(type(serializer), name) is getattr(SerializerMethods, name)
        and name not in vars(serializer)
    ):
        target = serializer._serializer
    method: Callable[..., Any] = getattr(target, name)
    return method


class SerializerMethods:
    """A layer's public ``serialize`` / ``deserialize`` (channels-valkey 0.3's API), on its ``_serializer``.

    Both layers mix this in and build their :class:`MessageCodec` on themselves, so a subclass that overrides either
    method is used for every message sent and received.
    """

    _serializer: MessageSerializer
    #: The layer's codec, built on the layer itself (so a subclass's ``serialize`` is heard).
    _codec: MessageCodec
    #: The largest serialized message :meth:`_payload` lets through, or None for no limit.
    max_message_bytes: int | None = None

    def serialize(self, message: dict[str, Any]) -> bytes:
        """The bytes stored or published for ``message``."""
        return self._serializer.serialize(message)

    def deserialize(self, message: bytes) -> dict[str, Any]:
        """The message stored or published as ``message``; ``ValueError`` / ``TypeError`` when it cannot be read."""
        return self._serializer.deserialize(message)

    def _payload(self, message: dict[str, Any], kind: str, name: str) -> bytes:
        """The bytes to write for ``message`` (the codec's ``encode``: :meth:`serialize`, or the serializer's own
        where the layer's class keeps this one), or :class:`MessageTooLarge` naming the ``kind`` (``"channel"``,
        ``"group"``) and ``name`` it was for when they are over ``max_message_bytes``.

        Every send of the layers encodes through here before it writes anything.
        """
        payload = self._codec.encode(message)
        limit = self.max_message_bytes
        if limit is not None and len(payload) > limit:
            raise MessageTooLarge(f"{kind} {name!r}", len(payload), limit)
        return payload

    def _payloads(self, pairs: Sequence[tuple[str, dict[str, Any]]], kind: str) -> list[bytes]:
        """The bytes :meth:`_payload` gives for each ``(name, message)`` pair, for a bulk send: the same bytes, in
        one pass of the serializer's ``serialize_many`` where it has one and :meth:`serialize` is not overridden.

        An unencodable message raises before any size is looked at; then the first pair over
        ``max_message_bytes`` raises :class:`MessageTooLarge` naming the ``kind`` and name.
        """
        messages = [message for _, message in pairs]
        serialize_many = getattr(self._serializer, "serialize_many", None)
        if serialize_many is None or type(self).serialize is not SerializerMethods.serialize:
            payloads = [self.serialize(message) for message in messages]
        else:
            payloads = serialize_many(messages)
        limit = self.max_message_bytes
        if limit is not None and payloads and max(map(len, payloads)) > limit:
            index = next(index for index, payload in enumerate(payloads) if len(payload) > limit)
            raise MessageTooLarge(f"{kind} {pairs[index][0]!r}", len(payloads[index]), limit)
        return payloads

"""Every exception this package raises on purpose, in one place.

Each one also derives from the built-in exception the peers (channels_redis 4, channels-valkey 0.3) raise in the
same situation, so code written against them keeps catching what it caught before.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = [
    "MessageDecodeError",
    "MessageEncodeError",
    "SerializerConfigError",
    "SerializerDoesNotExist",
    "SerializerError",
    "SerializerRegistrationError",
]


def a_type(value: object) -> str:
    """``"a set"``, ``"an int"``: the type of ``value`` with its article, for error texts."""
    name = type(value).__name__
    return f"{'an' if name[:1].lower() in 'aeiou' else 'a'} {name}"


class SerializerError(Exception):
    """Base of the exceptions of ``channels_valkey.serializers``: catch this to catch them all."""


class SerializerDoesNotExist(SerializerError, KeyError):
    """No serializer is registered under the requested format name.

    ``args[0]`` is the requested format, as with the peers; ``registered`` lists the formats that do exist.
    """

    def __init__(self, format: object, registered: Iterable[str] = ()) -> None:
        super().__init__(format)
        self.format = format
        self.registered = tuple(registered)

    def __str__(self) -> str:
        # KeyError would print only the repr of args[0]; say what exists instead.
        known = ", ".join(repr(name) for name in self.registered) or "none"
        return f"no serializer is registered for format {self.format!r}; registered formats: {known}"


class SerializerConfigError(SerializerError, ValueError):
    """A serializer was built with arguments it cannot work with (keys, prefix length, expiry, missing extra)."""


class SerializerRegistrationError(SerializerError, TypeError, AssertionError):
    """A format name or class handed to ``register_serializer`` cannot serialize messages.

    A ``TypeError``, since a wrong type is what it reports; also an ``AssertionError`` because channels-valkey 0.3
    and channels_redis 4 check registrations with ``assert``, and code written against them catches that.
    """


class MessageEncodeError(SerializerError, TypeError, ValueError):
    """A message cannot be written: it is not a dict, or holds a value the format cannot carry.

    Raised before any byte is produced. ``path`` names the offending value (``message['a'][0]``), or is ``None``
    when the message itself is the problem. It is both a ``TypeError`` and a ``ValueError`` because msgpack and
    json raise one or the other for the same kinds of mistakes.
    """

    def __init__(self, reason: str, path: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.path = path


class MessageDecodeError(SerializerError, ValueError):
    """Bytes read from the server are not a message this serializer can return; skip them and carry on.

    ``step`` says where reading stopped: ``"length"`` (shorter than the random prefix, or empty), ``"decrypt"``
    (not a Fernet token, signed by none of the keys, older than the TTL), ``"decode"`` (the format could not
    parse the bytes) or ``"type"`` (the bytes decoded to something other than a dict). The text names the step
    and the reason, never the content of the message.
    """

    STEPS = ("length", "decrypt", "decode", "type")

    def __init__(self, step: str, reason: str) -> None:
        super().__init__(f"cannot read message: {step} step failed: {reason}")
        self.step = step
        self.reason = reason

"""Which class serializes which format name: the layers' ``serializer_format`` setting is looked up here."""

from __future__ import annotations

import inspect
from typing import Any

from channels_valkey.serializers.base import BaseMessageSerializer
from channels_valkey.serializers.exceptions import SerializerDoesNotExist, SerializerRegistrationError
from channels_valkey.serializers.json_format import JSONSerializer
from channels_valkey.serializers.msgpack_format import MsgPackSerializer

__all__ = ["SerializersRegistry", "registry"]


class SerializersRegistry:
    """Format names mapped to serializer classes; registering a name again replaces its class.

    A class qualifies when it subclasses ``BaseMessageSerializer`` (and implements ``as_bytes`` and
    ``from_bytes``), or has ``serialize`` and ``deserialize`` methods and accepts the keyword arguments the
    layers pass: ``symmetric_encryption_keys``, ``random_prefix_length`` and ``expiry``.
    """

    def __init__(self) -> None:
        self._registry: dict[str, type[Any]] = {}

    @property
    def formats(self) -> tuple[str, ...]:
        """The registered format names, sorted."""
        return tuple(sorted(self._registry))

    def register_serializer(self, format: str, serializer_class: type[Any]) -> None:
        """Serialize ``format`` with ``serializer_class`` from now on.

        An unfit format or class raises ``SerializerRegistrationError``, which ``except TypeError`` and, as with
        0.3's ``assert``, ``except AssertionError`` both catch.
        """
        if not isinstance(format, str) or not format:
            raise SerializerRegistrationError(f"a serializer format must be a non-empty str, not {format!r}")
        if not isinstance(serializer_class, type):
            raise SerializerRegistrationError(
                f"serializer for {format!r} must be a class, not {type(serializer_class).__name__} "
                f"{serializer_class!r}"
            )
        name = serializer_class.__qualname__
        if issubclass(serializer_class, BaseMessageSerializer):
            if inspect.isabstract(serializer_class):
                missing = ", ".join(sorted(getattr(serializer_class, "__abstractmethods__", ())))
                raise SerializerRegistrationError(
                    f"serializer {name} for {format!r} does not implement {missing}, which "
                    "BaseMessageSerializer subclasses must provide"
                )
        else:
            absent = [
                method
                for method in ("serialize", "deserialize")
                if not callable(getattr(serializer_class, method, None))
            ]
            if absent:
                raise SerializerRegistrationError(
                    f"serializer {name} for {format!r} has no {' or '.join(absent)} method: register a "
                    "BaseMessageSerializer subclass, or a class with serialize(message) -> bytes and "
                    "deserialize(bytes) -> message"
                )
        self._registry[format] = serializer_class

    def get_serializer(self, format: str, *args: Any, **kwargs: Any) -> Any:
        """A new instance of the class registered for ``format``, built with the given arguments."""
        try:
            serializer_class = self._registry[format]
        except (KeyError, TypeError):
            raise SerializerDoesNotExist(format, self.formats) from None
        return serializer_class(*args, **kwargs)


#: The registry the layers use: ``msgpack`` (their default) and ``json``.
registry = SerializersRegistry()
registry.register_serializer("json", JSONSerializer)
registry.register_serializer("msgpack", MsgPackSerializer)

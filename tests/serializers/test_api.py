"""The public API matches channels-valkey 0.3's ``channels_valkey.serializers``: names, signatures, behaviour."""

from __future__ import annotations

import abc
import inspect
from typing import Any

import pytest

import channels_valkey.serializers as serializers
from channels_valkey.serializers import (
    BaseMessageSerializer,
    JSONSerializer,
    MessageDecodeError,
    MessageEncodeError,
    MsgPackSerializer,
    MsgpackSerializer,
    SerializerConfigError,
    SerializerDoesNotExist,
    SerializerError,
    SerializerRegistrationError,
    SerializersRegistry,
    registry,
)


def test_the_peer_names_are_all_importable_from_the_package() -> None:
    for name in (
        "BaseMessageSerializer",
        "JSONSerializer",
        "MsgPackSerializer",
        "SerializerDoesNotExist",
        "SerializersRegistry",
        "registry",
    ):
        assert name in serializers.__all__
        assert getattr(serializers, name) is not None
    assert serializers.__version__ == "1.0.0"


def test_msgpack_serializer_is_also_spelled_msgpackserializer() -> None:
    assert MsgpackSerializer is MsgPackSerializer


def test_base_constructor_has_the_peer_signature() -> None:
    parameters = inspect.signature(BaseMessageSerializer.__init__).parameters
    assert list(parameters) == ["self", "symmetric_encryption_keys", "random_prefix_length", "expiry"]
    assert parameters["symmetric_encryption_keys"].default is None
    assert parameters["random_prefix_length"].default == 0
    assert parameters["expiry"].default is None


def test_base_is_abstract_over_as_bytes_and_from_bytes() -> None:
    assert isinstance(BaseMessageSerializer, abc.ABCMeta)
    assert BaseMessageSerializer.__abstractmethods__ == frozenset({"as_bytes", "from_bytes"})
    with pytest.raises(TypeError, match="abstract"):
        BaseMessageSerializer()  # type: ignore[abstract]


def test_constructor_arguments_are_kept_as_attributes() -> None:
    serializer = MsgPackSerializer(random_prefix_length=12, expiry=60)
    assert serializer.random_prefix_length == 12
    assert serializer.expiry == 60
    assert serializer.crypter is None


@pytest.mark.parametrize("serializer_class", [MsgPackSerializer, JSONSerializer])
@pytest.mark.parametrize("length", [0, -1, -12])
def test_a_prefix_length_of_zero_or_less_means_no_prefix_as_in_0_3(
    serializer_class: type[BaseMessageSerializer], length: int
) -> None:
    message = {"type": "chat.message", "text": "hi"}
    serializer = serializer_class(random_prefix_length=length)
    assert serializer.random_prefix_length == length
    assert serializer.serialize(message) == serializer.as_bytes(message)
    assert serializer.deserialize(serializer.as_bytes(message)) == message


@pytest.mark.parametrize("length", [0, -1])
def test_an_encrypted_message_without_prefix_is_the_bare_token(length: int) -> None:
    writer = MsgPackSerializer(symmetric_encryption_keys=["k"], random_prefix_length=length)
    token = writer.serialize({"type": "x"})
    # A Fernet token starts with version byte 0x80, which url-safe base64 writes as "gA".
    assert token.startswith(b"gA")
    reader = MsgPackSerializer(symmetric_encryption_keys=["k"], random_prefix_length=length)
    assert reader.deserialize(token) == {"type": "x"}


def test_crypter_is_a_multifernet_built_with_make_fernet() -> None:
    from cryptography.fernet import Fernet, MultiFernet

    serializer = MsgPackSerializer(symmetric_encryption_keys=["new", b"old"])
    assert isinstance(serializer.crypter, MultiFernet)
    fernet = serializer.make_fernet("new")
    assert isinstance(fernet, Fernet)
    # The crypter reads what the Fernet of either key writes, and writes with the first key.
    assert serializer.crypter.decrypt(serializer.make_fernet("old").encrypt(b"data")) == b"data"
    assert fernet.decrypt(serializer.crypter.encrypt(b"data")) == b"data"


def test_as_bytes_and_from_bytes_are_the_bare_format_without_prefix_or_encryption() -> None:
    serializer = MsgPackSerializer(symmetric_encryption_keys=["k"], random_prefix_length=12)
    assert serializer.as_bytes({"a": 1}) == b"\x81\xa1a\x01"
    assert serializer.from_bytes(b"\x81\xa1a\x01") == {"a": 1}
    json_serializer = JSONSerializer()
    assert json_serializer.as_bytes({"a": [1, None]}) == b'{"a": [1, null]}'
    assert json_serializer.from_bytes(b'{"a": [1, null]}') == {"a": [1, None]}


def test_format_arguments_reach_the_format_library() -> None:
    assert MsgPackSerializer.as_bytes({"f": 1.5}, use_single_float=True) == b"\x81\xa1f\xca?\xc0\x00\x00"
    assert MsgPackSerializer.from_bytes(b"\x81\x01\x02", strict_map_key=False) == {1: 2}
    assert JSONSerializer.as_bytes({"b": 1, "a": 2}, sort_keys=True) == b'{"a": 2, "b": 1}'
    assert JSONSerializer.from_bytes(b'{"a": 1.5}', parse_float=str) == {"a": "1.5"}


def test_registry_has_msgpack_and_json() -> None:
    assert registry.formats == ("json", "msgpack")
    assert isinstance(registry.get_serializer("msgpack"), MsgPackSerializer)
    assert isinstance(registry.get_serializer("json"), JSONSerializer)


def test_get_serializer_passes_the_arguments_the_layers_pass() -> None:
    # The core layer's call, then the Pub/Sub layer's call.
    core = registry.get_serializer(
        "msgpack", random_prefix_length=12, expiry=60, symmetric_encryption_keys=["secret"]
    )
    assert (core.random_prefix_length, core.expiry, core.crypter is not None) == (12, 60, True)
    pubsub = registry.get_serializer("json", symmetric_encryption_keys=None)
    assert (pubsub.random_prefix_length, pubsub.expiry, pubsub.crypter) == (0, None, None)
    positional = registry.get_serializer("msgpack", ["secret"], 4, 30)
    assert (positional.random_prefix_length, positional.expiry) == (4, 30)


def test_serializer_does_not_exist_is_a_key_error_carrying_the_format() -> None:
    with pytest.raises(KeyError) as caught:
        registry.get_serializer("yaml")
    assert isinstance(caught.value, SerializerDoesNotExist)
    assert caught.value.args[0] == "yaml"
    assert caught.value.format == "yaml"


def test_every_exception_shares_one_base_and_keeps_its_builtin_parent() -> None:
    assert issubclass(SerializerDoesNotExist, (SerializerError, KeyError))
    assert issubclass(SerializerConfigError, SerializerError)
    assert issubclass(SerializerConfigError, ValueError)
    assert issubclass(MessageEncodeError, TypeError)
    assert issubclass(MessageEncodeError, ValueError)
    assert issubclass(MessageDecodeError, SerializerError)
    assert issubclass(MessageDecodeError, ValueError)
    assert issubclass(SerializerRegistrationError, SerializerError)
    assert issubclass(SerializerRegistrationError, TypeError)
    assert issubclass(SerializerRegistrationError, AssertionError)


class _Reversed(BaseMessageSerializer):
    """A custom format: JSON written backwards, enough to see that the base class adds prefix and encryption."""

    def as_bytes(self, message: Any, *args: Any, **kwargs: Any) -> bytes:
        return JSONSerializer.as_bytes(message)[::-1]

    def from_bytes(self, message: Any, *args: Any, **kwargs: Any) -> Any:
        return JSONSerializer.from_bytes(bytes(message)[::-1])


class _Tagged:
    """A class that is not a BaseMessageSerializer but has serialize/deserialize and takes the layers' arguments."""

    def __init__(self, **kwargs: Any) -> None:
        self.kwargs = kwargs

    def serialize(self, message: dict[str, Any]) -> bytes:
        return b"tagged:" + repr(sorted(message.items())).encode()

    def deserialize(self, message: bytes) -> dict[str, Any]:
        return {"raw": message}


def test_a_custom_subclass_gets_prefix_and_encryption_from_the_base() -> None:
    local = SerializersRegistry()
    local.register_serializer("reversed", _Reversed)
    serializer = local.get_serializer("reversed", symmetric_encryption_keys=["k"], random_prefix_length=5)
    data = serializer.serialize({"type": "x", "n": 1})
    assert b'"x"' not in data  # encrypted
    assert serializer.deserialize(data) == {"type": "x", "n": 1}
    plain = local.get_serializer("reversed").serialize({"type": "x"})
    assert plain == b'}"x" :"epyt"{'


def test_a_subclass_overriding_as_bytes_of_a_builtin_format_is_used() -> None:
    calls: list[Any] = []

    class Counting(MsgPackSerializer):
        def as_bytes(self, message: Any, *args: Any, **kwargs: Any) -> bytes:
            calls.append(message)
            return super().as_bytes(message, *args, **kwargs)

        def from_bytes(self, message: Any, *args: Any, **kwargs: Any) -> Any:
            calls.append(type(message))
            return super().from_bytes(message, *args, **kwargs)

    serializer = Counting(random_prefix_length=12)
    big = {"type": "x", "blob": b"\x00" * 100_000}
    assert serializer.deserialize(serializer.serialize(big)) == big
    # The override saw the message, and was handed bytes (not a memoryview) for the big body.
    assert calls == [big, bytes]


def test_a_duck_typed_class_can_be_registered_and_built_with_the_layers_arguments() -> None:
    local = SerializersRegistry()
    local.register_serializer("tagged", _Tagged)
    serializer = local.get_serializer(
        "tagged", symmetric_encryption_keys=None, random_prefix_length=12, expiry=60
    )
    assert isinstance(serializer, _Tagged)
    assert serializer.kwargs == {"symmetric_encryption_keys": None, "random_prefix_length": 12, "expiry": 60}
    assert serializer.serialize({"a": 1}) == b"tagged:[('a', 1)]"


def test_registering_a_format_again_replaces_its_class() -> None:
    local = SerializersRegistry()
    local.register_serializer("msgpack", MsgPackSerializer)
    local.register_serializer("msgpack", _Tagged)
    assert isinstance(local.get_serializer("msgpack"), _Tagged)


def test_an_assigned_crypter_is_used_for_every_message() -> None:
    class Rot:
        """A stand-in crypter: a byte rotation. Enough to see which object the serializer calls."""

        def encrypt(self, msg: bytes) -> bytes:
            return bytes((byte + 1) % 256 for byte in msg)

        def decrypt(self, msg: bytes, ttl: int | None = None) -> bytes:
            return bytes((byte - 1) % 256 for byte in msg)

    serializer = MsgPackSerializer(symmetric_encryption_keys=["k"], random_prefix_length=3)
    serializer.crypter = Rot()
    data = serializer.serialize({"a": 1})
    assert data[3:] == bytes(byte + 1 for byte in b"\x81\xa1a\x01")
    assert serializer.deserialize(data) == {"a": 1}
    serializer.crypter = None
    assert serializer.serialize({"a": 1})[3:] == b"\x81\xa1a\x01"

"""Every bad input named in issue #3 gets its documented exception, and the text names the problem.

Writing side: raised by serialize() before any byte is produced. Reading side: one exception type,
``MessageDecodeError``, whose ``step`` and text say where reading stopped and whose text never quotes the message.
"""

from __future__ import annotations

import base64
import hashlib
from typing import Any

import msgpack
import pytest
from cryptography.fernet import Fernet

from channels_valkey.serializers import (
    BaseMessageSerializer,
    JSONSerializer,
    MessageDecodeError,
    MessageEncodeError,
    MsgPackSerializer,
    SerializerConfigError,
    SerializerDoesNotExist,
    SerializerError,
    SerializerRegistrationError,
    SerializersRegistry,
    registry,
)

SECRET = "hunter2-the-plaintext"

# --- writing -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["msgpack", "json"])
@pytest.mark.parametrize("message", [["type", "x"], "type=x", b"\x80", None, 42])
def test_a_message_that_is_not_a_dict_is_refused(fmt: str, message: Any) -> None:
    with pytest.raises(
        MessageEncodeError, match=f"a message must be a dict, not {type(message).__name__}"
    ) as caught:
        registry.get_serializer(fmt).serialize(message)
    assert caught.value.path is None


@pytest.mark.parametrize(
    ("message", "path", "reason"),
    [
        ({"type": "x", "tags": {"a", "b"}}, "message['tags']", "is a set, which msgpack cannot carry"),
        (
            {"type": "x", "when": [1, {"at": object()}]},
            "message['when'][1]['at']",
            "is an object, which msgpack cannot carry",
        ),
        ({"type": "x", "n": {"big": 2**64}}, "message['n']['big']", "is an int outside the range"),
        ({"type": "x", "n": -(2**63) - 1}, "message['n']", "is an int outside the range"),
        (
            {"type": "x", "text": "bad \ud800 surrogate"},
            "message['text']",
            "is a str that is not valid Unicode",
        ),
    ],
)
def test_msgpack_names_the_key_of_a_value_it_cannot_carry(message: Any, path: str, reason: str) -> None:
    with pytest.raises(MessageEncodeError) as caught:
        MsgPackSerializer(random_prefix_length=12).serialize(message)
    assert caught.value.path == path
    assert f"cannot serialize {path}: it {reason}" in str(caught.value)


@pytest.mark.parametrize(
    ("message", "path", "reason"),
    [
        ({"type": "x", "tags": {"a", "b"}}, "message['tags']", "is a set, which JSON cannot carry"),
        (
            {"type": "x", "deep": [{"v": 1j}]},
            "message['deep'][0]['v']",
            "is a complex, which JSON cannot carry",
        ),
        ({"type": "x", "d": {(1, 2): "tuple key"}}, "message['d']", "has a key of type tuple"),
        ({"type": "x", "blob": b"ok", "other": {1.5}}, "message['other']", "is a set"),
    ],
)
def test_json_names_the_key_of_a_value_it_cannot_carry(message: Any, path: str, reason: str) -> None:
    with pytest.raises(MessageEncodeError) as caught:
        JSONSerializer().serialize(message)
    assert caught.value.path == path
    assert f"cannot serialize {path}: it {reason}" in str(caught.value)


@pytest.mark.parametrize("fmt", ["msgpack", "json"])
def test_a_circular_message_is_named(fmt: str) -> None:
    inner: list[Any] = []
    inner.append(inner)
    with pytest.raises(MessageEncodeError, match=r"message\['loop'\]\[0\]: it contains itself"):
        registry.get_serializer(fmt).serialize({"type": "x", "loop": inner})


def test_msgpack_names_a_message_nested_deeper_than_it_can_write() -> None:
    deep: dict[str, Any] = {}
    node = deep
    for _ in range(1500):
        node["d"] = {}
        node = node["d"]
    with pytest.raises(
        MessageEncodeError, match="nests lists and dicts 1502 deep, deeper than msgpack writes"
    ):
        MsgPackSerializer().serialize({"type": "x", "deep": deep})


def test_json_names_a_message_nested_too_deeply_for_python() -> None:
    deep: list[Any] = []
    node = deep
    for _ in range(5000):
        node.append([])
        node = node[0]
    with pytest.raises(MessageEncodeError, match="nested too deeply"):
        JSONSerializer().serialize({"type": "x", "deep": deep})


def test_encode_errors_are_still_the_builtin_exceptions_the_peers_raise() -> None:
    with pytest.raises(TypeError):
        MsgPackSerializer().serialize({"type": "x", "s": {1}})
    loop: dict[str, Any] = {}
    loop["self"] = loop
    with pytest.raises(ValueError, match="circular"):
        JSONSerializer().serialize({"type": "x", "loop": loop})


# --- configuration -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("keys", ["a-single-key", b"a-single-key", bytearray(b"k")])
def test_keys_given_as_a_bare_string_are_refused(keys: Any) -> None:
    with pytest.raises(
        SerializerConfigError, match=f"must be a list of keys, not a bare {type(keys).__name__}"
    ):
        MsgPackSerializer(symmetric_encryption_keys=keys)


def test_a_key_that_is_not_str_or_bytes_is_named_by_its_position() -> None:
    with pytest.raises(SerializerConfigError, match=r"symmetric_encryption_keys\[1\] is an int"):
        MsgPackSerializer(symmetric_encryption_keys=["good", 1234])
    with pytest.raises(SerializerConfigError, match="must be a list of str or bytes keys, not int"):
        MsgPackSerializer(symmetric_encryption_keys=1234)


def test_false_keys_mean_no_encryption_as_with_the_peers() -> None:
    for keys in (None, [], (), ""):
        assert MsgPackSerializer(symmetric_encryption_keys=keys).crypter is None


def test_keys_that_turn_out_to_hold_no_key_are_refused() -> None:
    # An iterator is true even when it yields nothing: that is a mistake, not a request for no encryption.
    with pytest.raises(SerializerConfigError, match="is a list_iterator that holds no key"):
        MsgPackSerializer(symmetric_encryption_keys=iter([]))


@pytest.mark.parametrize(
    ("length", "named"),
    [(1.5, "a float 1.5"), ("12", "a str '12'"), (True, "a bool True"), (None, "a NoneType None")],
)
def test_a_random_prefix_length_that_is_not_an_int_is_named(length: Any, named: str) -> None:
    with pytest.raises(
        SerializerConfigError,
        match=f"random_prefix_length must be an int \\(0 or less for no prefix\\), not {named}",
    ):
        MsgPackSerializer(random_prefix_length=length)


@pytest.mark.parametrize("expiry", [-5, "60", float("nan"), float("inf"), False])
def test_a_bad_expiry_is_named(expiry: Any) -> None:
    with pytest.raises(SerializerConfigError, match="expiry must be None or a number of seconds"):
        MsgPackSerializer(expiry=expiry)


def test_an_unknown_format_lists_the_registered_ones() -> None:
    with pytest.raises(SerializerDoesNotExist) as caught:
        registry.get_serializer("yaml", random_prefix_length=12)
    assert str(caught.value) == (
        "no serializer is registered for format 'yaml'; registered formats: 'json', 'msgpack'"
    )
    assert caught.value.registered == ("json", "msgpack")
    with pytest.raises(SerializerDoesNotExist, match="registered formats: none"):
        SerializersRegistry().get_serializer("msgpack")


def test_a_class_without_serialize_or_deserialize_cannot_be_registered() -> None:
    class WritesOnly:
        def serialize(self, message: Any) -> bytes:
            return b""

    class Neither:
        pass

    local = SerializersRegistry()
    with pytest.raises(TypeError, match="WritesOnly for 'w' has no deserialize method"):
        local.register_serializer("w", WritesOnly)
    with pytest.raises(TypeError, match="Neither for 'n' has no serialize or deserialize method"):
        local.register_serializer("n", Neither)
    assert local.formats == ()


def test_a_subclass_missing_as_bytes_cannot_be_registered() -> None:
    class HalfDone(BaseMessageSerializer):
        def from_bytes(self, message: Any, *args: Any, **kwargs: Any) -> Any:
            return {}

    with pytest.raises(TypeError, match="HalfDone for 'half' does not implement as_bytes"):
        SerializersRegistry().register_serializer("half", HalfDone)


class _WritesOnly:
    """Has serialize but no deserialize: not a serializer."""

    def serialize(self, message: Any) -> bytes:
        return b""


class _HalfDone(BaseMessageSerializer):
    """Leaves as_bytes abstract."""

    def from_bytes(self, message: Any, *args: Any, **kwargs: Any) -> Any:
        return {}


@pytest.mark.parametrize(
    ("format", "unfit", "named"),
    [
        ("custom", _WritesOnly, "_WritesOnly for 'custom' has no deserialize method"),
        ("custom", _HalfDone, "_HalfDone for 'custom' does not implement as_bytes"),
        ("custom", len, "serializer for 'custom' must be a class, not builtin_function_or_method"),
        (3, MsgPackSerializer, "format must be a non-empty str, not 3"),
    ],
)
def test_registration_errors_are_caught_as_the_assertion_errors_of_0_3(
    format: Any, unfit: Any, named: str
) -> None:
    # 0.3 checks registrations with assert, so code written for it says "except AssertionError".
    with pytest.raises(AssertionError, match=named) as caught:
        SerializersRegistry().register_serializer(format, unfit)
    assert isinstance(caught.value, SerializerRegistrationError)
    assert isinstance(caught.value, TypeError)
    assert isinstance(caught.value, SerializerError)


def test_only_classes_and_str_formats_can_be_registered() -> None:
    local = SerializersRegistry()
    with pytest.raises(TypeError, match="must be a class, not MsgPackSerializer"):
        local.register_serializer("x", MsgPackSerializer())
    with pytest.raises(TypeError, match="format must be a non-empty str, not 3"):
        local.register_serializer(3, MsgPackSerializer)  # type: ignore[arg-type]


# --- reading -------------------------------------------------------------------------------------------------


def fernet_of(key: str) -> Fernet:
    return Fernet(base64.urlsafe_b64encode(hashlib.sha256(key.encode()).digest()))


SECRET_MESSAGE = {"type": "x", "text": SECRET, "blob": SECRET.encode()}


def bad_inputs() -> list[tuple[str, dict[str, Any], bytes, str, str]]:
    """(case, serializer settings, bytes read, expected step, expected words in the text)."""
    packed = msgpack.packb(SECRET_MESSAGE)
    bad_utf8 = msgpack.packb({"type": "x", "text": SECRET})
    bad_utf8 = bad_utf8.replace(SECRET.encode(), b"\xff" + SECRET.encode()[1:])
    plain = {"random_prefix_length": 12}
    sealed = {"random_prefix_length": 12, "symmetric_encryption_keys": ["k"], "expiry": 60}
    return [
        ("empty", {}, b"", "length", "the message is empty"),
        ("only the prefix", plain, b"p" * 12, "length", "no longer than its 12-byte random prefix"),
        ("shorter than the prefix", sealed, b"p" * 5, "length", "5 bytes, no longer than its 12-byte"),
        ("truncated msgpack", plain, b"p" * 12 + packed[:-3], "decode", "incomplete input"),
        ("trailing bytes", plain, b"p" * 12 + packed + b"\x01", "decode", "ExtraData"),
        ("reserved byte", plain, b"p" * 12 + b"\xc1", "decode", "FormatError"),
        ("invalid utf-8", plain, b"p" * 12 + bad_utf8, "decode", "invalid UTF-8"),
        ("int map key", plain, b"p" * 12 + b"\x81\x01\xa1x", "decode", "int is not allowed for map key"),
        (
            "not a dict",
            plain,
            b"p" * 12 + msgpack.packb([SECRET, 1]),
            "type",
            "decoded to a list, not a dict",
        ),
        ("a str", plain, b"p" * 12 + msgpack.packb(SECRET), "type", "decoded to a str, not a dict"),
        ("not a token", sealed, b"p" * 12 + packed, "decrypt", "not a Fernet token"),
        ("wrong key", sealed, b"p" * 12 + fernet_of("other").encrypt(packed), "decrypt", "signed by none"),
        (
            "older than the TTL",
            sealed,
            b"p" * 12 + fernet_of("k").encrypt_at_time(packed, 1_000_000_000),
            "decrypt",
            "expired",
        ),
        (
            "encrypted, then not a dict",
            sealed,
            b"p" * 12 + fernet_of("k").encrypt(msgpack.packb([SECRET])),
            "type",
            "decoded to a list",
        ),
        (
            "encrypted, then not msgpack",
            sealed,
            b"p" * 12 + fernet_of("k").encrypt(SECRET.encode() + b"\xc1"),
            "decode",
            "MsgPackSerializer.from_bytes raised",
        ),
    ]


@pytest.mark.parametrize("case", [case[0] for case in bad_inputs()])
def test_bad_bytes_raise_one_exception_naming_the_step_and_never_the_plaintext(case: str) -> None:
    # Built when the test runs, not at collection: encrypted cases carry a timestamp the TTL is checked against,
    # and a long session would otherwise age them past it.
    settings, data, step, words = next(found[1:] for found in bad_inputs() if found[0] == case)
    with pytest.raises(MessageDecodeError) as caught:
        MsgPackSerializer(**settings).deserialize(data)
    error = caught.value
    assert error.step == step
    assert str(error).startswith(f"cannot read message: {step} step failed: ")
    assert words in str(error)
    assert SECRET not in str(error)
    assert SECRET not in repr(error)
    assert SECRET[:8] not in str(error)


@pytest.mark.parametrize(
    ("data", "step", "words"),
    [
        (b'{"type": "x", "text": "' + SECRET.encode() + b'"', "decode", "invalid JSON: Expecting ','"),
        (b"[" + b'"' + SECRET.encode() + b'"]', "type", "decoded to a list"),
        (b"\xef\xbb\xbf" + b'{"channels_valkey_bytes": 2, "message": {}}', "decode", "unknown version"),
        (
            b'\xef\xbb\xbf{"channels_valkey_bytes": 1, "message": {"b": 5}, "bytes_at": [["b"]]}',
            "decode",
            "does not lead to a base64 string",
        ),
        (
            b'\xef\xbb\xbf{"channels_valkey_bytes": 1, "message": {"b": "!!"}, "bytes_at": [["b"]]}',
            "decode",
            "invalid base64",
        ),
        (
            b'\xef\xbb\xbf{"channels_valkey_bytes": 1, "message": {}, "bytes_at": [["nowhere"]]}',
            "decode",
            "path leads nowhere",
        ),
    ],
)
def test_bad_json_raises_the_same_exception(data: bytes, step: str, words: str) -> None:
    with pytest.raises(MessageDecodeError) as caught:
        JSONSerializer().deserialize(data)
    assert caught.value.step == step
    assert words in str(caught.value)
    assert SECRET not in str(caught.value)


def test_reading_something_that_is_not_bytes_is_a_type_error() -> None:
    for settings in ({}, {"random_prefix_length": 12}, {"symmetric_encryption_keys": ["k"]}):
        with pytest.raises(TypeError, match="deserialize\\(\\) reads bytes, not NoneType"):
            MsgPackSerializer(**settings).deserialize(None)  # type: ignore[arg-type]


def test_a_receive_loop_can_skip_bad_messages_and_keep_going() -> None:
    reader = MsgPackSerializer(random_prefix_length=12, symmetric_encryption_keys=["k"], expiry=60)
    good = reader.serialize({"type": "ok"})
    stream = [good, b"", b"junk" * 40, good[:-4], fernet_of("other").encrypt(b"\x80"), good]
    received, skipped = [], []
    for data in stream:
        try:
            received.append(reader.deserialize(data))
        except MessageDecodeError as exc:
            skipped.append(exc.step)
    assert received == [{"type": "ok"}, {"type": "ok"}]
    assert skipped == ["length", "decrypt", "decrypt", "decrypt"]

"""Messages come back as they went in, for every format and option, and the bytes have the documented layout."""

from __future__ import annotations

import base64
import hashlib
import threading
from typing import Any

import msgpack
import pytest

from channels_valkey.serializers import JSONSerializer, MsgPackSerializer, registry

KEY_SETS = [None, ["only"], ["new", "old"]]
PREFIXES = [0, 12]
EXPIRIES = [None, 60]


@pytest.mark.parametrize("fmt", ["msgpack", "json"])
@pytest.mark.parametrize("keys", KEY_SETS)
@pytest.mark.parametrize("prefix", PREFIXES)
@pytest.mark.parametrize("expiry", EXPIRIES)
def test_every_channels_type_round_trips(
    every_type: dict[str, Any], fmt: str, keys: list[str] | None, prefix: int, expiry: int | None
) -> None:
    serializer = registry.get_serializer(
        fmt, symmetric_encryption_keys=keys, random_prefix_length=prefix, expiry=expiry
    )
    assert serializer.deserialize(serializer.serialize(every_type)) == every_type


def test_plain_bytes_are_the_prefix_then_the_format_bytes() -> None:
    message = {"type": "x", "n": 1}
    data = MsgPackSerializer(random_prefix_length=12).serialize(message)
    assert len(data) == 12 + len(msgpack.packb(message))
    assert data[12:] == msgpack.packb(message)
    assert JSONSerializer().serialize(message) == b'{"type": "x", "n": 1}'


def test_encrypted_bytes_are_the_prefix_then_a_fernet_token_of_the_format_bytes() -> None:
    from cryptography.fernet import Fernet

    message = {"type": "x", "n": 1}
    data = MsgPackSerializer(symmetric_encryption_keys=["secret"], random_prefix_length=12).serialize(message)
    token = data[12:]
    assert base64.urlsafe_b64decode(token)[0] == 0x80  # the Fernet version byte
    # The documented derivation: SHA-256 of the key, url-safe base64.
    fernet = Fernet(base64.urlsafe_b64encode(hashlib.sha256(b"secret").digest()))
    assert fernet.decrypt(token) == msgpack.packb(message)


def test_each_message_gets_a_new_random_prefix() -> None:
    serializer = MsgPackSerializer(random_prefix_length=12)
    prefixes = {serializer.serialize({"type": "same"})[:12] for _ in range(200)}
    assert len(prefixes) == 200


def test_no_prefix_means_no_random_bytes() -> None:
    serializer = MsgPackSerializer()
    assert serializer.serialize({"type": "same"}) == serializer.serialize({"type": "same"})


@pytest.mark.parametrize("keys", [None, ["k"]])
@pytest.mark.parametrize("fmt", ["msgpack", "json"])
def test_large_messages_round_trip(fmt: str, keys: list[str] | None) -> None:
    # Over 64 KiB the msgpack path hands a memoryview to the decoder instead of copying.
    message = {"type": "big", "blob": bytes(range(256)) * 4096, "text": "é" * 300_000}
    serializer = registry.get_serializer(fmt, symmetric_encryption_keys=keys, random_prefix_length=12)
    result = serializer.deserialize(serializer.serialize(message))
    assert result == message
    assert type(result["blob"]) is bytes


@pytest.mark.parametrize("keys", [None, ["k"]])
def test_bytearray_and_memoryview_input_are_read_like_bytes(keys: list[str] | None) -> None:
    serializer = MsgPackSerializer(symmetric_encryption_keys=keys, random_prefix_length=12)
    data = serializer.serialize({"type": "x"})
    assert serializer.deserialize(bytearray(data)) == {"type": "x"}  # type: ignore[arg-type]
    assert serializer.deserialize(memoryview(data)) == {"type": "x"}  # type: ignore[arg-type]


def test_tuples_become_lists_and_bytes_likes_become_bytes_as_with_the_peers() -> None:
    message = {"t": (1, (2, 3)), "ba": bytearray(b"ab"), "mv": memoryview(b"cd")}
    expected = {"t": [1, [2, 3]], "ba": b"ab", "mv": b"cd"}
    for serializer in (MsgPackSerializer(), JSONSerializer()):
        assert serializer.deserialize(serializer.serialize(message)) == expected


def test_dict_subclasses_are_messages() -> None:
    class Event(dict[str, Any]):
        pass

    serializer = MsgPackSerializer(random_prefix_length=4)
    assert serializer.deserialize(serializer.serialize(Event(type="x"))) == {"type": "x"}


@pytest.mark.parametrize("keys", [None, ["k"]])
def test_one_serializer_is_safe_to_share_between_threads(keys: list[str] | None) -> None:
    serializer = MsgPackSerializer(symmetric_encryption_keys=keys, random_prefix_length=12, expiry=60)
    failures: list[str] = []
    start = threading.Barrier(8)

    def worker(number: int) -> None:
        start.wait(timeout=30)
        for index in range(300):
            message = {"type": "t", "worker": number, "index": index, "pad": bytes([number]) * (index % 97)}
            if serializer.deserialize(serializer.serialize(message)) != message:
                failures.append(f"{number}/{index}")

    threads = [threading.Thread(target=worker, args=(number,)) for number in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads)
    assert failures == []

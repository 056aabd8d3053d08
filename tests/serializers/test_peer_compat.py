"""Byte compatibility with the real peer, channels_redis 4 (channels-valkey 0.3 is the same module renamed).

For every format and option combination the layers use, what channels_redis writes we read, and what we write
channels_redis reads. Where no randomness is involved (no encryption) the bytes after the random prefix are
compared outright. This is the only test module that imports channels_redis; the serializers-only environment
leaves it out.
"""

from __future__ import annotations

import itertools
import time
from typing import Any

import pytest
from channels_redis import serializers as peer
from cryptography.fernet import InvalidToken

from channels_valkey import serializers as ours

from .samples import EVERY_TYPE, without_bytes

FORMATS = ["msgpack", "json"]
KEY_SETS = [None, ["only-key"], ["new-key", "old-key"]]
PREFIXES = [0, 12]
EXPIRIES = [None, 60]
COMBINATIONS = list(itertools.product(FORMATS, KEY_SETS, PREFIXES, EXPIRIES))


def combination_id(combination: tuple[str, list[str] | None, int, int | None]) -> str:
    fmt, keys, prefix, expiry = combination
    return f"{fmt}-keys{len(keys or [])}-prefix{prefix}-expiry{expiry}"


def message_for(fmt: str) -> dict[str, Any]:
    """The richest message the peer itself can write in ``fmt`` (its JSON has no bytes)."""
    return EVERY_TYPE if fmt == "msgpack" else without_bytes(EVERY_TYPE)


def both(fmt: str, **settings: Any) -> tuple[Any, Any]:
    """Our serializer and the peer's, built the way the layers build them."""
    return ours.registry.get_serializer(fmt, **settings), peer.registry.get_serializer(fmt, **settings)


@pytest.mark.parametrize("combination", COMBINATIONS, ids=combination_id)
def test_we_read_what_the_peer_writes(combination: tuple[str, list[str] | None, int, int | None]) -> None:
    fmt, keys, prefix, expiry = combination
    mine, theirs = both(fmt, symmetric_encryption_keys=keys, random_prefix_length=prefix, expiry=expiry)
    message = message_for(fmt)
    assert mine.deserialize(theirs.serialize(message)) == message


@pytest.mark.parametrize("combination", COMBINATIONS, ids=combination_id)
def test_the_peer_reads_what_we_write(combination: tuple[str, list[str] | None, int, int | None]) -> None:
    fmt, keys, prefix, expiry = combination
    mine, theirs = both(fmt, symmetric_encryption_keys=keys, random_prefix_length=prefix, expiry=expiry)
    message = message_for(fmt)
    assert theirs.deserialize(mine.serialize(message)) == message


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("prefix", PREFIXES)
def test_unencrypted_bytes_are_identical_after_the_prefix(fmt: str, prefix: int) -> None:
    mine, theirs = both(fmt, random_prefix_length=prefix, expiry=60)
    message = message_for(fmt)
    ours_bytes, their_bytes = mine.serialize(message), theirs.serialize(message)
    assert len(ours_bytes) == len(their_bytes)
    assert ours_bytes[prefix:] == their_bytes[prefix:]
    assert mine.as_bytes(message) == theirs.as_bytes(message)


@pytest.mark.parametrize("fmt", FORMATS)
def test_encrypted_tokens_hold_identical_format_bytes(fmt: str) -> None:
    mine, theirs = both(fmt, symmetric_encryption_keys=["k"], random_prefix_length=12, expiry=60)
    message = message_for(fmt)
    # Each side's crypter opens the other side's token and finds the very bytes it would have encrypted.
    assert theirs.crypter.decrypt(mine.serialize(message)[12:]) == theirs.as_bytes(message)
    assert mine.crypter.decrypt(theirs.serialize(message)[12:]) == mine.as_bytes(message)


@pytest.mark.parametrize("fmt", FORMATS)
def test_keys_rotate_across_a_mixed_fleet(fmt: str) -> None:
    message = message_for(fmt)
    our_old, their_old = both(fmt, symmetric_encryption_keys=["old"], random_prefix_length=12)
    our_both, their_both = both(fmt, symmetric_encryption_keys=["new", "old"], random_prefix_length=12)
    # Processes still on [old] and processes already on [new, old] read each other, in both directions.
    assert our_both.deserialize(their_old.serialize(message)) == message
    assert their_both.deserialize(our_old.serialize(message)) == message
    assert their_both.deserialize(our_both.serialize(message)) == message
    assert our_both.deserialize(their_both.serialize(message)) == message


@pytest.mark.parametrize("fmt", FORMATS)
def test_both_sides_apply_the_same_ttl(fmt: str) -> None:
    message = message_for(fmt)
    mine, theirs = both(fmt, symmetric_encryption_keys=["k"], random_prefix_length=12, expiry=60)
    now = int(time.time())
    their_fresh = theirs.crypter.encrypt_at_time(theirs.as_bytes(message), now - 65)
    their_stale = theirs.crypter.encrypt_at_time(theirs.as_bytes(message), now - 75)
    assert mine.deserialize(b"p" * 12 + their_fresh) == message
    with pytest.raises(ours.MessageDecodeError, match="expired"):
        mine.deserialize(b"p" * 12 + their_stale)
    our_stale = mine.crypter.encrypt_at_time(mine.as_bytes(message), now - 75)
    with pytest.raises(InvalidToken):
        theirs.deserialize(b"p" * 12 + our_stale)
    our_fresh = mine.crypter.encrypt_at_time(mine.as_bytes(message), now - 65)
    assert theirs.deserialize(b"p" * 12 + our_fresh) == message


def test_the_layer_messages_of_both_layers_cross_over() -> None:
    # What the core layer sends to a process channel, and what group_send puts on each channel.
    direct = {"type": "chat.message", "text": "hi", "__asgi_channel__": "specific.abc!def"}
    group = {
        "type": "chat.message",
        "text": "hi",
        "__asgi_channel__": ["specific.abc!def", "specific.abc!ghi"],
    }
    for message in (direct, group):
        mine, theirs = both("msgpack", random_prefix_length=12, expiry=60, symmetric_encryption_keys=None)
        assert mine.deserialize(theirs.serialize(message)) == message
        assert theirs.deserialize(mine.serialize(message)) == message
    # The Pub/Sub layer passes only the keys.
    mine, theirs = both("msgpack", symmetric_encryption_keys=None)
    assert mine.serialize(direct) == theirs.serialize(direct)


def test_the_peer_cannot_write_bytes_in_json_so_our_envelope_never_meets_its_output() -> None:
    with pytest.raises(TypeError):
        peer.registry.get_serializer("json").serialize({"type": "x", "b": b"\x00"})


def test_unknown_formats_fail_the_same_way() -> None:
    with pytest.raises(KeyError) as theirs:
        peer.registry.get_serializer("yaml")
    with pytest.raises(KeyError) as mine:
        ours.registry.get_serializer("yaml")
    assert type(theirs.value).__name__ == type(mine.value).__name__ == "SerializerDoesNotExist"
    assert theirs.value.args == mine.value.args == ("yaml",)

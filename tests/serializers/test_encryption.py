"""Fernet encryption: key derivation, rotation without downtime, the TTL, and what a wrong key or tampering gives.

Tokens dated in the past or future are made with cryptography's own ``encrypt_at_time`` instead of waiting for
the clock.
"""

from __future__ import annotations

import base64
import hashlib
import os
import time
from typing import Any

import msgpack
import pytest
from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.hmac import HMAC

from channels_valkey.serializers import MessageDecodeError, MsgPackSerializer

MESSAGE = {"type": "secret.message", "text": "the plaintext", "blob": b"\x00\xff"}
PACKED = msgpack.packb(MESSAGE)


def fernet_of(key: str) -> Fernet:
    """The Fernet a configured key turns into, computed the documented way (not with our code)."""
    return Fernet(base64.urlsafe_b64encode(hashlib.sha256(key.encode()).digest()))


def serializer(keys: list[str], expiry: int | None = 60, prefix: int = 12) -> MsgPackSerializer:
    return MsgPackSerializer(symmetric_encryption_keys=keys, random_prefix_length=prefix, expiry=expiry)


def test_str_and_bytes_keys_derive_the_same_fernet_key() -> None:
    text, raw = serializer(["clé"]), serializer(["clé".encode()])
    assert raw.deserialize(text.serialize(MESSAGE)) == MESSAGE
    assert text.deserialize(raw.serialize(MESSAGE)) == MESSAGE


def test_cryptography_reads_our_tokens_and_we_read_its_tokens() -> None:
    ours = serializer(["k"], prefix=0)
    assert fernet_of("k").decrypt(ours.serialize(MESSAGE)) == PACKED
    assert ours.deserialize(fernet_of("k").encrypt(PACKED)) == MESSAGE


def test_the_first_key_encrypts_and_every_key_decrypts() -> None:
    rotated = serializer(["new", "old"], prefix=0)
    token = rotated.serialize(MESSAGE)
    assert fernet_of("new").decrypt(token) == PACKED
    with pytest.raises(InvalidToken):
        fernet_of("old").decrypt(token)
    assert rotated.deserialize(fernet_of("old").encrypt(PACKED)) == MESSAGE


def test_keys_rotate_without_downtime() -> None:
    # Step 1: every process has [old]. Step 2: processes move, one at a time, to [new, old]. Step 3: [new].
    before, during, after = serializer(["old"]), serializer(["new", "old"]), serializer(["new"])
    assert during.deserialize(before.serialize(MESSAGE)) == MESSAGE
    assert during.deserialize(during.serialize(MESSAGE)) == MESSAGE
    assert after.deserialize(during.serialize(MESSAGE)) == MESSAGE
    # A message from the first step still in the queue when the old key is dropped cannot be read.
    with pytest.raises(MessageDecodeError, match="signed by none of the configured keys") as caught:
        after.deserialize(before.serialize(MESSAGE))
    assert caught.value.step == "decrypt"


def test_a_token_inside_the_ttl_is_read() -> None:
    now = int(time.time())
    reader = serializer(["k"], expiry=60, prefix=0)
    # expiry + 10 seconds: 69 seconds old is still fine.
    assert reader.deserialize(fernet_of("k").encrypt_at_time(PACKED, now - 69)) == MESSAGE


def test_a_token_older_than_expiry_plus_ten_seconds_is_refused() -> None:
    now = int(time.time())
    reader = serializer(["k"], expiry=60, prefix=0)
    with pytest.raises(MessageDecodeError, match="expired") as caught:
        reader.deserialize(fernet_of("k").encrypt_at_time(PACKED, now - 200))
    assert caught.value.step == "decrypt"
    assert "TTL is 70 s" in str(caught.value)


def test_without_expiry_there_is_no_ttl() -> None:
    reader = serializer(["k"], expiry=None, prefix=0)
    assert reader.deserialize(fernet_of("k").encrypt_at_time(PACKED, 1_000_000)) == MESSAGE


def test_a_token_dated_beyond_the_clock_skew_is_refused_when_a_ttl_applies() -> None:
    future = int(time.time()) + 3600
    with pytest.raises(MessageDecodeError, match="in the future"):
        serializer(["k"], prefix=0).deserialize(fernet_of("k").encrypt_at_time(PACKED, future))


def test_tokens_carry_the_time_they_were_written() -> None:
    # The TTL of every reader, ours or a peer's, is counted from this timestamp.
    before = int(time.time())
    token = serializer(["k"], prefix=0).serialize(MESSAGE)
    assert before <= fernet_of("k").extract_timestamp(token) <= int(time.time())


@pytest.mark.parametrize("position", [0, 1, 20, 60, -40, -1])
def test_any_altered_byte_is_refused(position: int) -> None:
    writer = serializer(["k"], prefix=0)
    token = bytearray(writer.serialize(MESSAGE))
    # Swap one base64 character for another valid one, so only the content changes.
    token[position] = ord("A") if token[position] != ord("A") else ord("B")
    with pytest.raises(MessageDecodeError) as caught:
        writer.deserialize(bytes(token))
    assert caught.value.step == "decrypt"
    reason = caught.value.reason
    assert "signed by none of the configured keys" in reason or "not a Fernet token" in reason


def test_a_truncated_token_is_not_a_token() -> None:
    writer = serializer(["k"], prefix=0)
    # Four base64 characters less: still valid base64, three bytes short of a whole token.
    with pytest.raises(MessageDecodeError, match=r"not a Fernet token \(\d+ bytes after base64 decoding\)"):
        writer.deserialize(writer.serialize(MESSAGE)[:-4])


def test_an_unencrypted_message_is_refused_by_an_encrypting_reader() -> None:
    plain = MsgPackSerializer(random_prefix_length=12).serialize(MESSAGE)
    with pytest.raises(MessageDecodeError, match="not a Fernet token") as caught:
        serializer(["k"]).deserialize(plain)
    assert caught.value.step == "decrypt"


def test_an_encrypted_message_is_refused_by_a_plain_reader() -> None:
    token = serializer(["k"]).serialize(MESSAGE)
    with pytest.raises(MessageDecodeError) as caught:
        MsgPackSerializer(random_prefix_length=12).deserialize(token)
    assert caught.value.step in {"decode", "type"}


class _RawKeys(MsgPackSerializer):
    """Derives keys its own way (keys are already Fernet keys): the serializer must use its Fernet objects."""

    def make_fernet(self, key: Any) -> Fernet:
        return Fernet(key)


def test_a_make_fernet_override_is_used_for_writing_and_reading() -> None:
    key = Fernet.generate_key()
    custom = _RawKeys(symmetric_encryption_keys=[key], expiry=60)
    token = custom.serialize(MESSAGE)
    assert Fernet(key).decrypt(token) == PACKED
    assert custom.deserialize(Fernet(key).encrypt(PACKED)) == MESSAGE


def test_errors_through_a_make_fernet_override_still_name_the_reason() -> None:
    key, other = Fernet.generate_key(), Fernet.generate_key()
    custom = _RawKeys(symmetric_encryption_keys=[key], expiry=60)
    with pytest.raises(MessageDecodeError, match="signed by none of the configured keys"):
        custom.deserialize(Fernet(other).encrypt(PACKED))
    with pytest.raises(MessageDecodeError, match="expired"):
        custom.deserialize(Fernet(key).encrypt_at_time(PACKED, int(time.time()) - 500))


def test_the_crypter_attribute_reads_what_the_serializer_writes() -> None:
    # Code written for the peers calls serializer.crypter directly when it overrides serialize/deserialize.
    writer = serializer(["new", "old"], prefix=0)
    assert isinstance(writer.crypter, MultiFernet)
    assert writer.crypter.decrypt(writer.serialize(MESSAGE), 70) == PACKED
    assert writer.deserialize(writer.crypter.encrypt(PACKED)) == MESSAGE


def signed_but_unpadded(key: str) -> bytes:
    """A token that carries a valid HMAC of ``key`` over a block that is not PKCS7-padded.

    No Fernet writes one; a holder of the key with a broken writer could. Built from the spec's layout.
    """
    raw = hashlib.sha256(key.encode()).digest()
    iv = os.urandom(16)
    encryptor = Cipher(algorithms.AES(raw[16:]), modes.CBC(iv)).encryptor()
    ciphertext = encryptor.update(b"\x00" * 16) + encryptor.finalize()
    signed = b"\x80" + int(time.time()).to_bytes(8, "big") + iv + ciphertext
    mac = HMAC(raw[:16], SHA256())
    mac.update(signed)
    return base64.urlsafe_b64encode(signed + mac.finalize())


def test_a_signed_token_that_does_not_decrypt_is_told_apart_from_a_wrong_key() -> None:
    token = signed_but_unpadded("k")
    assert fernet_of("k").extract_timestamp(token) > 0  # the signature is good...
    with pytest.raises(InvalidToken):
        fernet_of("k").decrypt(token)  # ...and cryptography still refuses it
    with pytest.raises(
        MessageDecodeError, match="signed by a configured key, but its content does not decrypt"
    ):
        serializer(["k"], prefix=0).deserialize(token)


class _Refusing:
    """A crypter of one's own that refuses every token with ``error``; it has no ``extract_timestamp``."""

    def __init__(self, error: Exception) -> None:
        self.error = error

    def encrypt(self, msg: bytes) -> bytes:
        return msg

    def decrypt(self, msg: bytes, ttl: int | None = None) -> bytes:
        raise self.error


def test_an_assigned_crypter_that_fails_its_own_way_is_named_without_its_text() -> None:
    reader = serializer(["k"])
    reader.crypter = _Refusing(RuntimeError("could not decrypt: the plaintext"))
    with pytest.raises(MessageDecodeError, match=r"the crypter raised RuntimeError$") as caught:
        reader.deserialize(b"p" * 12 + fernet_of("k").encrypt(PACKED))
    assert caught.value.step == "decrypt"
    assert "plaintext" not in str(caught.value)


def test_an_assigned_crypter_without_extract_timestamp_gets_the_general_reason() -> None:
    reader = serializer(["k"])
    reader.crypter = _Refusing(InvalidToken())
    with pytest.raises(MessageDecodeError, match="the crypter refused the token"):
        reader.deserialize(b"p" * 12 + fernet_of("k").encrypt(PACKED))

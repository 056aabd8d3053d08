"""Encryption settings: key checks and derivation, the lazy import of ``cryptography``, and read-side diagnosis.

``cryptography`` is an optional extra. Nothing here imports it until keys are actually given, so a plain
serializer works (and imports quickly) without it. Tokens are written and read by ``cryptography.fernet``
alone; this module prepares its keys and, once a token has been refused, finds out which check refused it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Protocol

from channels_valkey.serializers.exceptions import SerializerConfigError, a_type

if TYPE_CHECKING:
    from cryptography.fernet import Fernet, MultiFernet

__all__ = [
    "EXTRA_INSTALL",
    "MAX_CLOCK_SKEW",
    "TTL_MARGIN",
    "Crypter",
    "KeyMaterial",
    "describe_token_failure",
    "fernet_key",
    "load_fernet",
    "validate_keys",
]

#: What to run when encryption is asked for and ``cryptography`` is missing.
EXTRA_INSTALL = "pip install 'channels-valkey-serializers[cryptography]'"

#: Seconds added to ``expiry`` to get the TTL a token is checked against on read (the peers' margin).
TTL_MARGIN = 10

#: How far in the future a token's timestamp may be before it is refused (cryptography.fernet's value).
MAX_CLOCK_SKEW = 60

# The Fernet spec's layout, used only to say "not a token" after cryptography has refused one: a version byte
# of 0x80, then 8 bytes of time, a 16-byte IV, at least one 16-byte block of ciphertext, and a 32-byte HMAC.
_VERSION = 0x80
_FIXED = 1 + 8 + 16 + 32
_BLOCK = 16

KeyMaterial = str | bytes | bytearray | memoryview


class Crypter(Protocol):
    """What ``BaseMessageSerializer.crypter`` must offer; ``cryptography.fernet.MultiFernet`` is one."""

    def encrypt(self, msg: bytes) -> bytes: ...

    def decrypt(self, msg: bytes, ttl: int | None = None) -> bytes: ...


def validate_keys(keys: object) -> list[KeyMaterial]:
    """Return the keys as a list, or say exactly what is wrong with the setting."""
    if isinstance(keys, (str, bytes, bytearray, memoryview)):
        raise SerializerConfigError(
            f"symmetric_encryption_keys must be a list of keys, not a bare {type(keys).__name__}: "
            "write symmetric_encryption_keys=[key] (the first key encrypts, every key decrypts)"
        )
    if not isinstance(keys, Iterable):
        raise SerializerConfigError(
            f"symmetric_encryption_keys must be a list of str or bytes keys, not {type(keys).__name__}"
        )
    checked: list[KeyMaterial] = []
    for index, key in enumerate(keys):
        if not isinstance(key, (str, bytes, bytearray, memoryview)):
            raise SerializerConfigError(
                f"symmetric_encryption_keys[{index}] is {a_type(key)}; each key must be str or bytes"
            )
        checked.append(key)
    if not checked:
        # A true value that holds no key (an exhausted iterator): neither "no encryption" nor a key to use.
        raise SerializerConfigError(
            f"symmetric_encryption_keys is {a_type(keys)} that holds no key; give a list of str or bytes "
            "keys, or None for no encryption"
        )
    return checked


def fernet_key(key: KeyMaterial) -> bytes:
    """The ``Fernet`` key for one configured key: SHA-256 of its (UTF-8) bytes, url-safe base64, as the peers do."""
    raw = key.encode("utf-8") if isinstance(key, str) else key
    return base64.urlsafe_b64encode(hashlib.sha256(raw).digest())


def load_fernet() -> tuple[type[Fernet], type[MultiFernet]]:
    """Import ``Fernet`` and ``MultiFernet``, or explain which extra to install."""
    try:
        from cryptography.fernet import Fernet, MultiFernet
    except ImportError as exc:
        raise SerializerConfigError(
            "symmetric_encryption_keys needs the 'cryptography' package, which cannot be imported "
            f"({exc}); install the extra: {EXTRA_INSTALL}"
        ) from exc
    return Fernet, MultiFernet


def describe_token_failure(crypter: object, token: bytes, ttl: float | None, exc: Exception) -> str:
    """Why ``crypter`` refused ``token``: not a token, signed by none of the keys, or outside its time window.

    ``MultiFernet.decrypt`` raises the same ``InvalidToken`` for all of these. This runs only after it has, so
    telling them apart never slows down good messages. The text never quotes the token or its content.
    """
    try:
        from cryptography.fernet import InvalidToken
    except ImportError:  # a crypter of its own, with cryptography not installed
        return f"the crypter raised {type(exc).__name__}"
    if not isinstance(exc, InvalidToken):
        return f"the crypter raised {type(exc).__name__}"
    malformed = _token_shape_problem(token)
    if malformed is not None:
        return f"the bytes are not a Fernet token ({malformed})"
    extract = getattr(crypter, "extract_timestamp", None)
    if extract is None:
        return "the crypter refused the token (wrong key, altered bytes, or older than the TTL)"
    try:
        # MultiFernet checks the signature with each key here, and only returns the time if one matches.
        timestamp = int(extract(token))
    except Exception:
        return "the token is signed by none of the configured keys (wrong or retired key, or altered bytes)"
    return _describe_age(timestamp, ttl) or (
        "the token is signed by a configured key, but its content does not decrypt (bad padding)"
    )


def _token_shape_problem(token: bytes) -> str | None:
    """What keeps ``token`` from having a Fernet token's layout, or ``None`` when it has it."""
    try:
        # Decoded as leniently as cryptography decodes it, so only what it could never read is "not a token".
        data = base64.urlsafe_b64decode(token)
    except (binascii.Error, ValueError):
        return "invalid base64"
    size = len(data)
    if not size or data[0] != _VERSION:
        return "no Fernet version byte"
    if size < _FIXED + _BLOCK or (size - _FIXED) % _BLOCK:
        return f"{size} bytes after base64 decoding"
    return None


def _describe_age(timestamp: int, ttl: float | None) -> str | None:
    """Say why a correctly signed token is out of its time window, or ``None`` when it is inside it."""
    if ttl is None:
        return None
    now = int(time.time())
    if timestamp + ttl < now:
        return (
            f"the message expired: it was encrypted {now - timestamp} s ago and the TTL is {ttl:g} s "
            f"(expiry + {TTL_MARGIN})"
        )
    if now + MAX_CLOCK_SKEW < timestamp:
        return (
            f"the message is dated {timestamp - now} s in the future, more than the {MAX_CLOCK_SKEW} s "
            "of clock skew allowed"
        )
    return None

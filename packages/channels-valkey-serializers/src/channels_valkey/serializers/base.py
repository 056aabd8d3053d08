"""``BaseMessageSerializer``: random prefix, Fernet encryption and the checks shared by every format.

A serialized message is ``random_prefix_length`` random bytes, then the format's bytes, Fernet-encrypted when
keys are configured: exactly what channels_redis 4 and channels-valkey 0.3 write, so processes of either
version can share a server during an upgrade.
"""

from __future__ import annotations

import abc
import json
import random
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from channels_valkey.serializers.crypto import (
    TTL_MARGIN,
    Crypter,
    KeyMaterial,
    describe_token_failure,
    fernet_key,
    load_fernet,
    validate_keys,
)
from channels_valkey.serializers.exceptions import (
    MessageDecodeError,
    MessageEncodeError,
    SerializerConfigError,
    a_type,
)

if TYPE_CHECKING:
    from cryptography.fernet import Fernet

__all__ = ["BaseMessageSerializer", "Message"]

#: A channels message: a dict of str keys to bytes, str, int, float, bool, None, lists and dicts.
Message = dict[str, Any]

# Above this size, stripping the prefix hands a memoryview to formats that accept one instead of copying.
_VIEW_THRESHOLD = 64 * 1024

_getrandbits = random.getrandbits
#: What ``serialize_many`` compares the first message with: no message is this object.
_NO_MESSAGE = object()


def _not_a_dict(message: object) -> MessageEncodeError:
    return MessageEncodeError(
        f"a message must be a dict, not {type(message).__name__}: channels messages are dicts with a 'type' key"
    )


class BaseMessageSerializer(abc.ABC):
    """Turn channels messages into the bytes the layers store, and back.

    Subclasses provide ``as_bytes`` and ``from_bytes`` for one format; this class adds the random prefix
    (which keeps identical messages distinct in a sorted set), encryption with key rotation, and the checks
    that give bad input a clear error. ``crypter`` is the ``MultiFernet`` built from the keys with
    ``make_fernet`` (``None`` without keys) and does all the encrypting and decrypting; assigning another object
    with ``encrypt``/``decrypt`` makes the serializer use that instead.
    """

    #: The object that encrypts and decrypts (a ``MultiFernet``), or ``None`` when nothing is encrypted.
    crypter: Crypter | None

    # True when from_bytes also reads a memoryview, which lets big messages skip a copy.
    _reads_buffers: ClassVar[bool] = False
    # A format whose bytes are ``_packer_type().pack(message)`` (msgpack) names the type here, so serialize()
    # packs without a Python call in between; _encode_error then turns the packer's exception into ours.
    _packer_type: ClassVar[type[Any] | None] = None

    def __init__(
        self,
        symmetric_encryption_keys: object = None,
        random_prefix_length: int = 0,
        expiry: float | None = None,
    ) -> None:
        # As in 0.3, 0 or less means no prefix; the value is kept as given, and the hot path only uses a length
        # above 0. A bool is an int to Python but never a length someone meant.
        if isinstance(random_prefix_length, bool) or not isinstance(random_prefix_length, int):
            raise SerializerConfigError(
                "random_prefix_length must be an int (0 or less for no prefix), not "
                f"{a_type(random_prefix_length)} {random_prefix_length!r}"
            )
        if expiry is not None and (
            isinstance(expiry, bool) or not isinstance(expiry, (int, float)) or not 0 <= expiry < float("inf")
        ):
            raise SerializerConfigError(
                f"expiry must be None or a number of seconds of 0 or more, not {expiry!r}"
            )
        self.random_prefix_length = random_prefix_length
        self.expiry = expiry
        # The hot path reads these from the instance: in CPython that is quicker than a class attribute.
        self._packer = self._packer_type
        self._decoder = self._decode
        self._setup_encryption(symmetric_encryption_keys)

    def _setup_encryption(self, symmetric_encryption_keys: object) -> None:
        # Like the peers, any false value (None, "", []) means "no encryption".
        if not symmetric_encryption_keys:
            self.crypter = None
            return
        keys = validate_keys(symmetric_encryption_keys)
        _, multi_fernet = load_fernet()
        self.crypter = multi_fernet([self.make_fernet(key) for key in keys])

    def make_fernet(self, key: KeyMaterial) -> Fernet:
        """The ``Fernet`` for one configured key: SHA-256 of the key, url-safe base64 encoded."""
        fernet, _ = load_fernet()
        if not isinstance(key, (str, bytes, bytearray, memoryview)):
            raise SerializerConfigError(f"an encryption key must be str or bytes, not {type(key).__name__}")
        return fernet(fernet_key(key))

    @abc.abstractmethod
    def as_bytes(self, message: Any, *args: Any, **kwargs: Any) -> bytes:
        """The format's bytes for ``message``."""
        raise NotImplementedError

    @abc.abstractmethod
    def from_bytes(self, message: Any, *args: Any, **kwargs: Any) -> Any:
        """The value the format's bytes ``message`` hold."""
        raise NotImplementedError

    def serialize(self, message: Message) -> bytes:
        """The bytes to store for ``message``: random prefix + format bytes, encrypted when keys are set."""
        if type(message) is not dict and not isinstance(message, dict):
            raise _not_a_dict(message)
        packer_type = self._packer
        if packer_type is None:
            data = self._encode(message)
        else:
            try:
                data = packer_type().pack(message)
            except (TypeError, ValueError, OverflowError) as exc:
                raise self._encode_error(message, exc) from exc
        crypter = self.crypter
        if crypter is not None:
            data = crypter.encrypt(data)
        size = self.random_prefix_length
        if size > 0:
            return _getrandbits(size * 8).to_bytes(size, "big") + data
        return data

    def serialize_many(self, messages: Sequence[Message]) -> list[bytes]:
        """What ``[self.serialize(message) for message in messages]`` gives, in fewer steps: for bulk sends.

        Where a message's bytes depend on nothing but the message (no random prefix, no encryption, the format's
        own encoder), one msgpack packer serves every message and a message object given again right after itself
        (one dict sent to many groups) is encoded once. Otherwise each message goes through :meth:`serialize`, so
        each gets its own random prefix or token, as it would sent alone.
        """
        encode = self._encode
        if (
            self.crypter is not None
            or self.random_prefix_length > 0
            or type(self).serialize is not BaseMessageSerializer.serialize
            or type(self)._encode is BaseMessageSerializer._encode
        ):
            return [self.serialize(message) for message in messages]
        packer_type = self._packer
        pack = None if packer_type is None else packer_type().pack
        encoded: list[bytes] = []
        previous: object = _NO_MESSAGE
        data = b""
        for message in messages:
            if message is not previous:
                if type(message) is not dict and not isinstance(message, dict):
                    raise _not_a_dict(message)
                if pack is None:
                    data = encode(message)
                else:
                    try:
                        data = pack(message)
                    except (TypeError, ValueError, OverflowError) as exc:
                        raise self._encode_error(message, exc) from exc
                previous = message
            encoded.append(data)
        return encoded

    def deserialize(self, message: bytes) -> Message:
        """The message stored as ``message``; any bad input raises ``MessageDecodeError`` (log it, skip it)."""
        skip = self.random_prefix_length
        crypter = self.crypter
        body: bytes | memoryview
        try:
            if crypter is not None:
                body = self._decrypt(crypter, message, skip)
            elif skip <= 0:
                body = message
            elif len(message) <= _VIEW_THRESHOLD or not self._reads_buffers:
                body = message[skip:]
            else:
                # A big body goes to a format that reads a memoryview, without the copy a slice makes.
                body = memoryview(message)[skip:]
            result = self._decoder(body)
        except MessageDecodeError:
            raise
        except Exception as exc:
            # Not bytes, or too short, is told apart here, off the path of good messages.
            self._checked_input(message, skip)
            raise MessageDecodeError("decode", self._describe_decode_failure(exc)) from exc
        if type(result) is dict or isinstance(result, dict):
            return result
        raise MessageDecodeError("type", f"the bytes decoded to {a_type(result)}, not a dict")

    def _decrypt(self, crypter: Crypter, message: bytes, skip: int) -> bytes:
        if type(message) is not bytes or len(message) <= skip:
            message = self._checked_input(message, skip)
        token = message[skip:] if skip > 0 else message
        expiry = self.expiry
        ttl = None if expiry is None else expiry + TTL_MARGIN
        try:
            # Fernet compares the TTL with int(time.time()); a float TTL works the same way.
            return crypter.decrypt(token, ttl)  # type: ignore[arg-type]
        except Exception as exc:
            # "from None": the crypter's own exception says nothing more, and a custom one might quote data.
            raise MessageDecodeError("decrypt", describe_token_failure(crypter, token, ttl, exc)) from None

    # The hot path calls these two with the bare message. A format may set them to a faster function with the
    # same result as its as_bytes / from_bytes; a subclass that overrides as_bytes or from_bytes gets these
    # generic versions back (see __init_subclass__), so its own methods are always the ones used.
    def _encode(self, message: Message) -> bytes:
        return self.as_bytes(message)

    def _decode(self, data: bytes | memoryview) -> Any:
        return self.from_bytes(data)

    @staticmethod
    def _encode_error(message: Any, exc: Exception) -> Exception:
        return exc

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        own = vars(cls)
        if "as_bytes" in own and "_encode" not in own:
            cls._encode = BaseMessageSerializer._encode  # type: ignore[method-assign]
            if "_packer_type" not in own:
                cls._packer_type = None
        if "from_bytes" in own and "_decode" not in own:
            cls._decode = BaseMessageSerializer._decode  # type: ignore[method-assign]
            if "_reads_buffers" not in own:
                cls._reads_buffers = False

    def _checked_input(self, message: object, skip: int) -> bytes:
        # Off the fast path: anything that is not bytes longer than the prefix ends here.
        if not isinstance(message, (bytes, bytearray, memoryview)):
            raise TypeError(f"deserialize() reads bytes, not {type(message).__name__}")
        data = bytes(message)
        size = len(data)
        if not size:
            raise MessageDecodeError("length", "the message is empty")
        if size <= skip:
            raise MessageDecodeError(
                "length", f"the message is {size} bytes, no longer than its {skip}-byte random prefix"
            )
        return data

    def _describe_decode_failure(self, exc: Exception) -> str:
        # Name the failure without quoting the data: these texts end up in logs.
        where = f"{type(self).__name__}.from_bytes"
        if isinstance(exc, UnicodeDecodeError):
            return f"{where} found invalid UTF-8 in a string ({exc.reason}, byte {exc.start} of the string)"
        if isinstance(exc, json.JSONDecodeError):
            return f"{where} found invalid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        if isinstance(exc, RecursionError):
            return f"{where} found the data nested too deeply"
        text = str(exc)
        return f"{where} raised {type(exc).__name__}" + (f": {text}" if text else "")

"""Message serializers for the Valkey channel layers (``channels_valkey.serializers``).

The same API and the same bytes on the server as ``channels_valkey.serializers`` in channels-valkey 0.3 and
``channels_redis.serializers`` in channels_redis 4: msgpack or JSON, an optional random prefix, and Fernet
encryption with key rotation. Usable on its own, without Django or Channels.
"""

from channels_valkey.serializers.__about__ import __version__
from channels_valkey.serializers.base import BaseMessageSerializer, Message
from channels_valkey.serializers.exceptions import (
    MessageDecodeError,
    MessageEncodeError,
    SerializerConfigError,
    SerializerDoesNotExist,
    SerializerError,
    SerializerRegistrationError,
)
from channels_valkey.serializers.json_format import JSONSerializer
from channels_valkey.serializers.msgpack_format import MsgPackSerializer, MsgpackSerializer
from channels_valkey.serializers.registry import SerializersRegistry, registry

__all__ = [
    "BaseMessageSerializer",
    "JSONSerializer",
    "Message",
    "MessageDecodeError",
    "MessageEncodeError",
    "MsgPackSerializer",
    "MsgpackSerializer",
    "SerializerConfigError",
    "SerializerDoesNotExist",
    "SerializerError",
    "SerializerRegistrationError",
    "SerializersRegistry",
    "__version__",
    "registry",
]

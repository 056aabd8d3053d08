"""The Pub/Sub channel layer for Django Channels (``channels_valkey.pubsub``).

``CHANNEL_LAYERS = {"default": {"BACKEND": "channels_valkey.pubsub.ValkeyPubSubChannelLayer", "CONFIG": {...}}}``
"""

from channels.exceptions import ChannelFull

from channels_valkey.pubsub.__about__ import __version__
from channels_valkey.pubsub.layer import ValkeyPubSubChannelLayer
from channels_valkey.sentinel import DropCounters

__all__ = ["ChannelFull", "DropCounters", "ValkeyPubSubChannelLayer", "__version__"]

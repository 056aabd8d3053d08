"""The sorted-set channel layer for Django Channels (``channels_valkey.core``).

``CHANNEL_LAYERS = {"default": {"BACKEND": "channels_valkey.core.ValkeyChannelLayer", "CONFIG": {...}}}``
"""

from channels.exceptions import ChannelFull

from channels_valkey.core.__about__ import __version__
from channels_valkey.core.exceptions import ForeignChannelError
from channels_valkey.core.layer import ValkeyChannelLayer
from channels_valkey.sentinel import DropCounters

__all__ = ["ChannelFull", "DropCounters", "ForeignChannelError", "ValkeyChannelLayer", "__version__"]

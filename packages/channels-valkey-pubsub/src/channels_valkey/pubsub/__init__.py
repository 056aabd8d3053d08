"""The Pub/Sub channel layer for Django Channels (``channels_valkey.pubsub``).

The layer itself lands with the channels-valkey-pubsub issue; this package holds its version and type marker.
"""

from channels_valkey.pubsub.__about__ import __version__

__all__ = ["__version__"]

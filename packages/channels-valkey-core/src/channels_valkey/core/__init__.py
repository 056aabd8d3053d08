"""The sorted-set channel layer for Django Channels (``channels_valkey.core``).

The layer itself lands with the channels-valkey-core issue; this package holds its version and type marker.
"""

from channels_valkey.core.__about__ import __version__

__all__ = ["__version__"]

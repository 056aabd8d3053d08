"""Connections to Valkey for the channel layers (``channels_valkey.sentinel``).

Host decoding, per-event-loop clients, the shard ring and Sentinel failover live here, once, for both layers.
"""

from channels_valkey.sentinel.__about__ import __version__

__all__ = ["__version__"]

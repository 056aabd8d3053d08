"""Message serializers for the Valkey channel layers (``channels_valkey.serializers``)."""

from channels_valkey.serializers.__about__ import __version__

__all__ = ["__version__"]

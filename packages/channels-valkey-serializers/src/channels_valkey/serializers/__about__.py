"""Version of the channels-valkey-serializers distribution, read by hatch at build time."""

__version__ = "1.0.0"

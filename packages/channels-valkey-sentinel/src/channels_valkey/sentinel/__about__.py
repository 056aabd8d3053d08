"""Version of the channels-valkey-sentinel distribution, read by hatch at build time."""

__version__ = "1.0.0"

"""Version of the channels-valkey-core distribution, read by hatch at build time."""

__version__ = "1.0.0"

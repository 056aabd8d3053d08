"""The two sides of every comparison: our layer and channels_redis 4's, made alike and cleaned up alike.

Both sides of a layer get the same server, the same settings and a prefix of their own, so that each can delete
exactly what it wrote. channels_redis is imported only here, when a bench runs: the rest of the command line tool
works without the ``bench`` extra.
"""

from __future__ import annotations

import importlib
from typing import Any

from channels_valkey.cli.measure.exceptions import MissingExtra

OURS = "ours"
PEER = "channels_redis"
SIDES = (OURS, PEER)
LAYERS = ("core", "pubsub")

#: Queue and buffer capacity on both sides: more than any case keeps in flight, so no send meets ChannelFull.
CAPACITY = 10_000

#: The peer's class of each layer: module and name.
_PEER_CLASSES = {
    "core": ("channels_redis.core", "RedisChannelLayer"),
    "pubsub": ("channels_redis.pubsub", "RedisPubSubChannelLayer"),
}
#: channels_redis speaks through redis-py, which knows the redis schemes only.
_PEER_SCHEMES = {"valkey": "redis", "valkeys": "rediss"}


def require_peer() -> None:
    """Raise :class:`MissingExtra` unless both channels_redis layers can be imported."""
    for module, _ in _PEER_CLASSES.values():
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise MissingExtra(
                "channels_redis", "channels-valkey bench compares our layers with channels_redis 4"
            ) from exc


def peer_url(url: str) -> str:
    """``url`` in the form redis-py accepts: ``valkey://`` becomes ``redis://``, ``valkeys://`` ``rediss://``."""
    scheme, separator, rest = url.partition("://")
    if not separator:
        return url
    return f"{_PEER_SCHEMES.get(scheme.lower(), scheme)}://{rest}"


def make_layer(layer: str, side: str, hosts: list[str], prefix: str) -> Any:
    """A new channel layer of kind ``layer`` ("core" or "pubsub") for ``side`` on ``hosts``, under ``prefix``."""
    if layer not in LAYERS:
        raise ValueError(f"layer must be one of {LAYERS}, not {layer!r}")
    if side == OURS:
        if layer == "core":
            from channels_valkey.core import ValkeyChannelLayer

            return ValkeyChannelLayer(hosts=hosts, prefix=prefix, capacity=CAPACITY)
        from channels_valkey.pubsub import ValkeyPubSubChannelLayer

        return ValkeyPubSubChannelLayer(hosts=hosts, prefix=prefix, capacity=CAPACITY)
    if side == PEER:
        module, name = _PEER_CLASSES[layer]
        peer_class = getattr(importlib.import_module(module), name)
        return peer_class(hosts=[peer_url(url) for url in hosts], prefix=prefix, capacity=CAPACITY)
    raise ValueError(f"side must be one of {SIDES}, not {side!r}")


async def discard_layer(layer: Any, side: str) -> None:
    """Delete what ``layer`` left on the server and close its connections on the running event loop."""
    await layer.flush()
    if side == OURS:
        await layer.close_pools()  # channels_redis's flush closes its connections itself

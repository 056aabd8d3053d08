"""What a layer has learned about one shard's server that changes how it talks to it (``ShardFacts``).

An ACL may refuse a command the layer prefers (``EVALSHA``, ``BZMPOP``) or the worker-queue commands altogether,
and an old server may lack one. Each is found out once, from the refusal, and then holds for the shard on every
event loop of the layer, so the layer does not try the refused way again on each call or each new loop.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ShardFacts:
    """The refusals met on one shard, kept by the :class:`~channels_valkey.sentinel.ConnectionManager`."""

    #: ``EVALSHA`` is refused: scripts run with ``EVAL`` (channels-valkey 0.3's ACL documented only EVAL).
    evalsha_refused: bool = False
    #: Popping with a receipt on a tracking connection is refused (``HELLO 3``, ``CLIENT TRACKING`` or the script):
    #: queues are read with ``BZMPOP``, and a cut connection may lose what a pop carried.
    receipts_refused: bool = False
    #: ``BZMPOP`` is refused or unknown: queues are read with ``BZPOPMIN``, then ``ZPOPMIN`` for a batch.
    bzmpop_refused: bool = False
    #: The queue commands are refused altogether: the Pub/Sub layer carries normal channels on Pub/Sub here.
    queues_refused: bool = False
    #: Scripts are refused (a user allowed only Pub/Sub, as 0.3 needed): the Pub/Sub layer's bulk publishes go as a
    #: pipeline of ``PUBLISH`` commands instead of a script.
    scripts_refused: bool = False

"""What each channel layer needs the server's ACL to allow: the one table ``channels-valkey check`` works from.

Each :class:`Need` is one thing a layer does and the commands it takes, the preferred way first and then the
fallbacks the layer switches to by itself when the ACL refuses the preferred way. On a Valkey Cluster the Pub/Sub
layer sends the sharded twins of the Pub/Sub commands, and both layers need a few commands more (the slot map,
redirections). The tests compare this table with the "Commands and ACLs" sections of the core and Pub/Sub READMEs
(their "on a Valkey Cluster" rows included) and with the commands the layers' Lua scripts call, so that a layer
growing a command cannot leave ``check`` behind unnoticed.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

#: Where a command's key or channel argument points: under the layer's prefix, or outside it.
Names = Literal["prefix", "outside"]
#: How bad it is when no way of a need is allowed: "error" breaks the layer, the others only limit it.
Severity = Literal["error", "warning", "note"]


@dataclass(frozen=True)
class Need:
    """Commands a layer operation runs; ``ways`` are alternatives, preferred first, each a set of commands."""

    use: str
    ways: tuple[tuple[str, ...], ...]
    #: What the layer does when every way is refused; empty when it cannot work at all.
    without: str = ""
    severity: Severity = "error"
    names: Names = "prefix"
    #: Only for the Pub/Sub layer with ``worker_channels="queue"`` (the default).
    worker_queues: bool = False

    def __post_init__(self) -> None:
        if not self.ways or not all(self.ways):
            raise ValueError(f"need {self.use!r} must list at least one way, each with commands")
        if (self.severity == "error") != (not self.without):
            raise ValueError(f"need {self.use!r}: a severity below error needs a 'without', and only then")

    @property
    def commands(self) -> frozenset[str]:
        return frozenset(command for way in self.ways for command in way)


_CORE_SCRIPT_COMMANDS = ("ZRANGE", "ZREMRANGEBYSCORE", "ZCOUNT", "ZADD", "EXPIRE")
_WORKER_SCRIPT_COMMANDS = ("ZSCORE", "ZREMRANGEBYSCORE", "ZCARD", "ZADD", "EXPIRE")
_UNBLOCK = ("CLIENT ID", "CLIENT UNBLOCK")
#: Receipt pops: RESP3 with client-side tracking on the pops' connection, and the pop and put-back scripts.
_RECEIPT_COMMANDS = (
    "HELLO",
    "CLIENT TRACKING",
    "ZRANGE",
    "ZADD",
    "PEXPIRE",
    "ZREMRANGEBYRANK",
    "ZCARD",
    "DEL",
    "ZREM",
)
_RECEIPTS_WITHOUT = (
    "receives pop with BZMPOP: a connection cut with a pop's reply on the wire loses what it carried"
)
_HEALTH_CHECKS = Need(
    "health checks of idle connections",
    (("PING",),),
    without="idle connections are not checked before use",
    severity="note",
)

#: The sorted-set layer, ``channels_valkey.core`` (its README, "Commands and ACLs").
CORE_NEEDS: tuple[Need, ...] = (
    Need("send, group_add, group_send, group_channels (one script call each)", (("EVALSHA",), ("EVAL",))),
    Need("the scripts' own commands", (_CORE_SCRIPT_COMMANDS,)),
    Need(
        "receive (pops that survive a cut connection)",
        tuple((script, *_RECEIPT_COMMANDS) for script in ("EVALSHA", "EVAL")),
        without=_RECEIPTS_WITHOUT,
        severity="warning",
    ),
    Need("receive", (("BZMPOP",), ("BZPOPMIN", "ZPOPMIN"))),
    Need("receive (putting unclaimed messages back)", (("ZADD",),)),
    Need(
        "receive (stopping a reader at once)",
        (_UNBLOCK,),
        without="a stopping reader waits for its pop to end (up to 5 s)",
        severity="note",
    ),
    Need("group_discard", (("ZREM",),)),
    Need("flush (finding the prefix's keys)", (("SCAN",), ("KEYS",))),
    Need("flush (deleting them)", (("DEL",),)),
    _HEALTH_CHECKS,
)

#: The Pub/Sub layer, ``channels_valkey.pubsub`` (its README, "Commands and ACLs").
PUBSUB_NEEDS: tuple[Need, ...] = (
    Need("send to process channels, group_send", (("PUBLISH",),)),
    Need("new_channel, receive, group_add, group_discard", (("SUBSCRIBE", "UNSUBSCRIBE"),)),
    Need(
        "receive on worker channels named outside the prefix",
        (("SUBSCRIBE", "UNSUBSCRIBE"),),
        without="the layer cannot subscribe to worker channels whose names do not start with the prefix "
        "(allow the channels &*)",
        severity="warning",
        names="outside",
    ),
    Need(
        "worker channels on queues (send and receive)",
        tuple(
            (script, *_WORKER_SCRIPT_COMMANDS, *pop)
            for pop in (("BZMPOP",), ("BZPOPMIN", "ZPOPMIN"))
            for script in ("EVALSHA", "EVAL")
        ),
        without="worker channels fall back to Pub/Sub: every receiving process gets each message, "
        "as in channels-valkey 0.3",
        severity="warning",
        worker_queues=True,
    ),
    Need(
        "worker channels: pops that survive a cut connection",
        tuple((script, *_RECEIPT_COMMANDS) for script in ("EVALSHA", "EVAL")),
        without=_RECEIPTS_WITHOUT,
        severity="warning",
        worker_queues=True,
    ),
    Need(
        "worker channels (stopping a reader at once)",
        (_UNBLOCK,),
        without="a stopping reader waits for its pop to end (up to 5 s)",
        severity="note",
        worker_queues=True,
    ),
    Need(
        "flush (deleting worker queues)",
        (("SCAN", "DEL"), ("KEYS", "DEL")),
        without="flush leaves the worker queues in place",
        severity="note",
        worker_queues=True,
    ),
    _HEALTH_CHECKS,
)


#: On a Valkey Cluster the Pub/Sub layer publishes and subscribes with sharded Pub/Sub, under the same names.
SHARDED_PUBSUB = {"PUBLISH": "SPUBLISH", "SUBSCRIBE": "SSUBSCRIBE", "UNSUBSCRIBE": "SUNSUBSCRIBE"}

#: What both layers need on a Valkey Cluster, besides what they need on one server.
CLUSTER_NEEDS: tuple[Need, ...] = (
    Need("finding the cluster's nodes (the slot map)", (("CLUSTER SLOTS",),)),
    Need(
        "commands on a slot being migrated (resharding)",
        (("ASKING",),),
        without="while a slot migrates, commands on its keys that already moved are retried, and may fail, "
        "until the migration ends",
        severity="warning",
    ),
)

#: What the Pub/Sub layer needs on a Valkey Cluster besides :data:`CLUSTER_NEEDS`.
PUBSUB_CLUSTER_NEEDS: tuple[Need, ...] = (
    Need(
        "following a graceful failover at once (a publish that reached nobody)",
        (("EXISTS",),),
        without="after a graceful failover, publishers keep sending through the demoted primary, which passes "
        "their messages on, until an error makes them read the slot map again",
        severity="note",
    ),
)


def needs_of(layer: str, *, worker_queues: bool = True, cluster: bool = False) -> tuple[Need, ...]:
    """The needs of ``layer`` ("core" or "pubsub"); ``worker_queues=False`` for ``worker_channels="pubsub"``,
    ``cluster=True`` for a cluster entry (``{"cluster": [...]}``) in ``hosts``."""
    if layer == "core":
        needs = CORE_NEEDS
    elif layer == "pubsub":
        needs = tuple(need for need in PUBSUB_NEEDS if worker_queues or not need.worker_queues)
    else:
        raise ValueError(f"unknown layer {layer!r}: expected 'core' or 'pubsub'")
    if not cluster:
        return needs
    extra = CLUSTER_NEEDS + (PUBSUB_CLUSTER_NEEDS if layer == "pubsub" else ())
    return tuple(_sharded(need) for need in needs) + extra


def _sharded(need: Need) -> Need:
    """``need`` with each Pub/Sub command replaced by its sharded twin, as the layer sends it on a cluster."""
    ways = tuple(tuple(SHARDED_PUBSUB.get(command, command) for command in way) for way in need.ways)
    return need if ways == need.ways else replace(need, ways=ways)


def commands_of(layer: str, *, cluster: bool = False) -> frozenset[str]:
    """Every command ``layer`` may send (on one server, or with ``cluster=True`` on a cluster), fallbacks included."""
    return frozenset().union(*(need.commands for need in needs_of(layer, cluster=cluster)))

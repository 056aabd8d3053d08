"""Connections to Valkey for the channel layers (``channels_valkey.sentinel``), and what both layers share.

Host decoding, per-event-loop clients, the shard ring, retries, Sentinel failover and Valkey Cluster routing live
here, once, for both layers. The layers use four things: :func:`decode_hosts` (``CONFIG["hosts"]`` to shard specs),
:class:`ShardRing` / :func:`consistent_hash` (which shard holds a name), :class:`ConnectionManager` (a client for a
shard on the running event loop, commands with retries, closing) and :class:`ResiliencePolicy` (timeouts and retries).
A shard of either kind, one server or a whole Valkey Cluster, is a :class:`ShardConnection`; what was learned about
it (refused commands) is its :class:`ShardFacts`; every retrying loop counts with :class:`Retries`.

What the two layers share beyond connections lives here too, so that it exists once and neither layer imports the
other: the reader of sorted-set queues (:class:`QueueReader`, with :func:`blocking_pop` and :func:`requeue`), the
script runner (:class:`Script`), what bulk sends share (``bulk``: checked pairs, scores, batches, results), the
checks of names and messages (``naming``) and of constructor options (:class:`LayerOptions`), the drop counters
(``counters``) and the codec that counts unreadable messages (``codec``).
None of it knows Channels or Django: the checks raise plain ``TypeError`` / ``ValueError``.
"""

from channels_valkey.sentinel.__about__ import __version__
from channels_valkey.sentinel.blocking import InterruptibleCalls, OnInterrupted, bzpopmin_entry
from channels_valkey.sentinel.bulk import (
    GroupSendManyResult,
    ScoreClock,
    SendManyResult,
    checked_pairs,
    pipelined,
    run_batches,
)
from channels_valkey.sentinel.cluster import ClusterShard, slot_of
from channels_valkey.sentinel.codec import MessageCodec, MessageSerializer, SerializerMethods
from channels_valkey.sentinel.connections import AnyShard, ConnectionManager
from channels_valkey.sentinel.counters import DropCounters, MessageCounts, ShardCounts, layer_stats
from channels_valkey.sentinel.decoding import decode_hosts
from channels_valkey.sentinel.discovery import discover_services
from channels_valkey.sentinel.exceptions import (
    CommandNotSent,
    HostConfigError,
    MessageTooLarge,
    ReplyLost,
    SentinelDiscoveryError,
    ShardUnavailable,
)
from channels_valkey.sentinel.facts import ShardFacts
from channels_valkey.sentinel.failures import Failure, classify, raise_if_reply_lost, refuses_health_check
from channels_valkey.sentinel.health import HealthReport, ServerHealth, check_health
from channels_valkey.sentinel.histograms import Distribution
from channels_valkey.sentinel.keys import delete_prefixed, glob_escape
from channels_valkey.sentinel.lane import read_reply
from channels_valkey.sentinel.loop_thread import LoopThread
from channels_valkey.sentinel.loops import close_before_loop
from channels_valkey.sentinel.metrics import METER_NAME, observe
from channels_valkey.sentinel.naming import (
    MAX_NAME_LENGTH,
    check_channel,
    check_group,
    check_message,
    is_process_channel,
    non_local_name,
)
from channels_valkey.sentinel.options import (
    DEFAULT_MAX_MESSAGE_BYTES,
    LayerOptions,
    check_channel_capacity,
    check_message_limit,
    check_policy,
    check_prefix,
    check_whole_number,
)
from channels_valkey.sentinel.parking import PARK_IDLE_SECONDS, PARK_LIMIT
from channels_valkey.sentinel.per_loop import PerLoop
from channels_valkey.sentinel.policy import DEFAULT_POLICY, ResiliencePolicy
from channels_valkey.sentinel.queue_commands import Entry, blocking_pop, requeue
from channels_valkey.sentinel.queue_reader import Handover, QueueReader, QueueSource
from channels_valkey.sentinel.reply_feed import feed_replies
from channels_valkey.sentinel.restarts import ServerRuns
from channels_valkey.sentinel.retry import Retries
from channels_valkey.sentinel.ring import ShardRing, consistent_hash
from channels_valkey.sentinel.scripts import Script, refuses_evalsha
from channels_valkey.sentinel.shard import Shard
from channels_valkey.sentinel.shard_protocol import ShardConnection
from channels_valkey.sentinel.specs import (
    DEFAULT_URL,
    ClusterHost,
    HostSpec,
    SentinelDiscovery,
    SentinelHost,
    ServerHost,
)
from channels_valkey.sentinel.sync_layer import SyncLayer, SyncLayerAccess
from channels_valkey.sentinel.tasks import (
    BackgroundTask,
    cancel_and_wait,
    every_result,
    raise_if_cancelling,
    wait_at_most,
)

__all__ = [
    "DEFAULT_MAX_MESSAGE_BYTES",
    "DEFAULT_POLICY",
    "DEFAULT_URL",
    "MAX_NAME_LENGTH",
    "METER_NAME",
    "PARK_IDLE_SECONDS",
    "PARK_LIMIT",
    "AnyShard",
    "BackgroundTask",
    "ClusterHost",
    "ClusterShard",
    "CommandNotSent",
    "ConnectionManager",
    "Distribution",
    "DropCounters",
    "Entry",
    "Failure",
    "GroupSendManyResult",
    "Handover",
    "HealthReport",
    "HostConfigError",
    "HostSpec",
    "InterruptibleCalls",
    "LayerOptions",
    "LoopThread",
    "MessageCodec",
    "MessageCounts",
    "MessageSerializer",
    "MessageTooLarge",
    "OnInterrupted",
    "PerLoop",
    "QueueReader",
    "QueueSource",
    "ReplyLost",
    "ResiliencePolicy",
    "Retries",
    "ScoreClock",
    "Script",
    "SendManyResult",
    "SentinelDiscovery",
    "SentinelDiscoveryError",
    "SentinelHost",
    "SerializerMethods",
    "ServerHealth",
    "ServerHost",
    "ServerRuns",
    "Shard",
    "ShardConnection",
    "ShardCounts",
    "ShardFacts",
    "ShardRing",
    "ShardUnavailable",
    "SyncLayer",
    "SyncLayerAccess",
    "__version__",
    "blocking_pop",
    "bzpopmin_entry",
    "cancel_and_wait",
    "check_channel",
    "check_channel_capacity",
    "check_group",
    "check_health",
    "check_message",
    "check_message_limit",
    "check_policy",
    "check_prefix",
    "check_whole_number",
    "checked_pairs",
    "classify",
    "close_before_loop",
    "consistent_hash",
    "decode_hosts",
    "delete_prefixed",
    "discover_services",
    "every_result",
    "feed_replies",
    "glob_escape",
    "is_process_channel",
    "layer_stats",
    "non_local_name",
    "observe",
    "pipelined",
    "raise_if_cancelling",
    "raise_if_reply_lost",
    "read_reply",
    "refuses_evalsha",
    "refuses_health_check",
    "requeue",
    "run_batches",
    "slot_of",
    "wait_at_most",
]

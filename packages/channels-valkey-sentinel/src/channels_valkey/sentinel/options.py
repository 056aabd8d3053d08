"""Checks of the constructor options both channel layers share, so that both refuse a bad setting alike.

Each check raises at construction, naming the option and quoting the value, instead of letting a bad setting
surface later as a confusing error deep in a send or receive.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from channels_valkey.sentinel.decoding import decode_hosts
from channels_valkey.sentinel.policy import ResiliencePolicy
from channels_valkey.sentinel.specs import ClusterHost, HostSpec

__all__ = [
    "DEFAULT_MAX_MESSAGE_BYTES",
    "LayerOptions",
    "check_channel_capacity",
    "check_message_limit",
    "check_policy",
    "check_prefix",
    "check_whole_number",
]

#: Largest serialized message either layer sends unless ``max_message_bytes`` says otherwise: 16 MiB, far above
#: what a channel layer is for, and half the Pub/Sub output buffer hard limit (32 MB) that would drop a subscriber.
DEFAULT_MAX_MESSAGE_BYTES = 16 * 1024 * 1024

_CLUSTER_BRACES = "the layer puts names in braces (hash tags) to choose their slots"


def check_prefix(prefix: object, *, cluster: bool = False, why: str = _CLUSTER_BRACES) -> str:
    """``prefix`` if it is a str (``TypeError`` otherwise) that a layer can use on these hosts.

    With ``cluster=True`` a prefix holding ``{`` or ``}`` is a ``ValueError``: on a Valkey Cluster a brace in the
    prefix would become the hash tag of the layer's names and move them out of the slots the layer chose for them.
    ``why`` is the layer's own account of how it tags its names, for the message.
    """
    if not isinstance(prefix, str):
        raise TypeError(f"prefix must be a str, not {prefix!r}")
    if cluster and ("{" in prefix or "}" in prefix):
        raise ValueError(f"prefix {prefix!r} cannot hold '{{' or '}}' on a Valkey Cluster: {why}")
    return prefix


def check_whole_number(name: str, value: object) -> int:
    """``value`` if it is an int of at least 1; otherwise ``ValueError`` naming the option ``name``.

    A bool is an int to Python but never a count or a number of seconds someone meant, so it is refused.
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a whole number >= 1, not {value!r}")
    return value


def check_message_limit(value: object) -> int | None:
    """``max_message_bytes``: a whole number of bytes (at least 1), or None for no limit; ``ValueError`` otherwise."""
    if value is None:
        return None
    return check_whole_number("max_message_bytes", value)


def check_channel_capacity(channel_capacity: Mapping[Any, int] | None) -> dict[Any, int]:
    """The ``channel_capacity`` setting as a dict, once every key is a glob string or a compiled regex (else
    ``TypeError``) and every limit a whole number (else ``ValueError`` naming the key)."""
    patterns = dict(channel_capacity or {})
    for pattern, limit in patterns.items():
        if not isinstance(pattern, str) and not hasattr(pattern, "match"):
            raise TypeError(
                f"channel_capacity keys must be glob strings or compiled regexes, not {pattern!r}"
            )
        check_whole_number(f"channel_capacity[{pattern!r}]", limit)
    return patterns


def check_policy(policy: object) -> ResiliencePolicy | None:
    """``policy`` if it is None (the default policy) or a :class:`ResiliencePolicy`; otherwise ``TypeError``."""
    if policy is not None and not isinstance(policy, ResiliencePolicy):
        raise TypeError(f"policy must be a channels_valkey.sentinel.ResiliencePolicy, not {policy!r}")
    return policy


@dataclass(frozen=True)
class LayerOptions:
    """The settings both layers take, checked, with ``hosts`` decoded (see :meth:`check`)."""

    prefix: str
    expiry: int
    group_expiry: int
    capacity: int
    #: ``channel_capacity`` as a dict of glob strings or compiled regexes to limits (for ``compile_capacities``).
    channel_capacity: dict[Any, int]
    hosts: list[HostSpec]
    #: Whether the only host entry is a Valkey Cluster.
    cluster: bool
    policy: ResiliencePolicy
    #: The largest serialized message a send accepts, or None for no limit.
    max_message_bytes: int | None

    @classmethod
    def check(
        cls,
        hosts: Any,
        prefix: object,
        expiry: object,
        group_expiry: object,
        capacity: object,
        channel_capacity: Mapping[Any, int] | None,
        policy: object,
        max_message_bytes: object,
        braces: str,
        /,
    ) -> LayerOptions:
        """Check every shared setting, in the order a reader of the settings meets them, before anything connects.

        The settings are positional, in the order of the layers' own arguments; each check names the setting.

        ``braces`` is the layer's own account of how it tags names on a cluster, for the error about a prefix
        holding a brace there.
        """
        checked_prefix = check_prefix(prefix)
        whole = {
            name: check_whole_number(name, value)
            for name, value in (("expiry", expiry), ("group_expiry", group_expiry), ("capacity", capacity))
        }
        patterns = check_channel_capacity(channel_capacity)
        checked_policy = check_policy(policy) or ResiliencePolicy()
        limit = check_message_limit(max_message_bytes)
        decoded = decode_hosts(hosts)
        cluster = isinstance(decoded[0], ClusterHost)
        check_prefix(prefix, cluster=cluster, why=braces)
        return cls(
            prefix=checked_prefix,
            expiry=whole["expiry"],
            group_expiry=whole["group_expiry"],
            capacity=whole["capacity"],
            channel_capacity=patterns,
            hosts=decoded,
            cluster=cluster,
            policy=checked_policy,
            max_message_bytes=limit,
        )

"""Which layer and which servers a command looks at: a Django settings module, or ``--hosts`` (or ``--cluster``)
on the command line.

``check`` and ``inspect`` take the same options. A settings module is imported as it is, without
``django.setup()``, so a project's channel layer settings can be checked before the rest of the project runs;
``CHANNEL_LAYERS[alias]["BACKEND"]`` says which layer it is and ``CONFIG`` is handed to that layer, which checks it
as it would at startup. ``--cluster URL ...`` is short for the cluster entry ``--hosts '{"cluster": [URL, ...]}'``
when the nodes need no options beyond what a URL says. Every mistake ends in :class:`TargetError`, whose message
says what to fix.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from channels_valkey.core import ValkeyChannelLayer
from channels_valkey.pubsub import ValkeyPubSubChannelLayer
from channels_valkey.sentinel import HostSpec, ResiliencePolicy

LAYERS = {"core": ValkeyChannelLayer, "pubsub": ValkeyPubSubChannelLayer}
#: The ``BACKEND`` path each layer is documented under: its package's, whatever module defines the class.
BACKENDS = {
    "core": "channels_valkey.core.ValkeyChannelLayer",
    "pubsub": "channels_valkey.pubsub.ValkeyPubSubChannelLayer",
}
DEFAULT_ALIAS = "default"
DEFAULT_PREFIX = "asgi"
DEFAULT_TIMEOUT = 5.0


class TargetError(Exception):
    """The options or the settings do not describe a usable layer (exit status 2); the message says why."""


@dataclass(frozen=True)
class Target:
    """A layer to look at: which one, its prefix, its ``CONFIG``, the shard specs, and where all that came from."""

    layer: str
    prefix: str
    config: Mapping[str, Any]
    specs: tuple[HostSpec, ...]
    source: str
    #: The layer itself, built from ``config`` with the command's timeouts; nothing is connected until used.
    instance: ValkeyChannelLayer | ValkeyPubSubChannelLayer

    @property
    def worker_queues(self) -> bool:
        """Whether the Pub/Sub layer carries normal channels on queues (``worker_channels="queue"``)."""
        return self.layer == "pubsub" and self.config.get("worker_channels", "queue") == "queue"


def positive_seconds(text: str) -> float:
    """argparse type of ``--timeout``: a number of seconds above zero."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number of seconds above 0, got {text!r}")
    return value


def add_target_arguments(parser: argparse.ArgumentParser) -> None:
    """The options that say which layer to look at (``--settings`` or ``--hosts``) and how long to wait."""
    group = parser.add_argument_group(
        "what to look at",
        "Either a Django settings module (--settings, or the DJANGO_SETTINGS_MODULE environment variable) or the "
        "servers themselves (--hosts, or --cluster for a Valkey Cluster).",
    )
    group.add_argument(
        "--settings",
        metavar="MODULE",
        help="dotted path of a Django settings module; its CHANNEL_LAYERS entry names the layer and its CONFIG",
    )
    group.add_argument(
        "--alias",
        metavar="NAME",
        help=f"the CHANNEL_LAYERS entry to use with --settings (default: {DEFAULT_ALIAS!r})",
    )
    group.add_argument(
        "--hosts",
        nargs="+",
        metavar="HOST",
        help="one entry per shard, as in CONFIG['hosts']: a URL (valkey://, valkeys://, unix://) or a JSON "
        'object such as \'{"sentinels": [["10.0.0.1", 26379]], "master_name": "mymaster"}\' or '
        '\'{"cluster": ["valkey://10.0.0.1:7000"], "ssl_ca_certs": "ca.pem"}\'',
    )
    group.add_argument(
        "--cluster",
        nargs="+",
        metavar="URL",
        help="some nodes of a Valkey Cluster (valkey://host:port or valkeys://..., credentials in the URL); the "
        "same as --hosts '{\"cluster\": [URL, ...]}'",
    )
    group.add_argument(
        "--layer", choices=sorted(LAYERS), help="which layer the --hosts or --cluster serve (default: core)"
    )
    group.add_argument(
        "--prefix",
        help=f"the layer's key prefix (default: the settings' prefix, or {DEFAULT_PREFIX!r} with --hosts or "
        "--cluster)",
    )
    parser.add_argument(
        "--timeout",
        type=positive_seconds,
        default=DEFAULT_TIMEOUT,
        metavar="SECONDS",
        help=f"longest wait to connect and for each reply (default: {DEFAULT_TIMEOUT:g})",
    )


def command_policy(timeout: float) -> ResiliencePolicy:
    """Connections for a command line tool: ``timeout`` for connecting and for every reply, and no retries, so a
    failure is reported at once instead of being ridden out."""
    return ResiliencePolicy(
        connect_timeout=timeout,
        socket_timeout=timeout,
        blocking_margin=timeout,
        health_check_interval=0,
        retry_attempts=0,
        retry_deadline=0,
    )


def resolve_target(args: argparse.Namespace) -> Target:
    """The layer the parsed options point at; raises :class:`TargetError` naming what is wrong."""
    settings = args.settings
    given = [
        option
        for option, value in (("--settings", settings), ("--hosts", args.hosts), ("--cluster", args.cluster))
        if value
    ]
    if len(given) > 1:
        raise TargetError(f"give one of --settings, --hosts or --cluster, not {' and '.join(given)}")
    if args.hosts or args.cluster:
        source = "--hosts" if args.hosts else "--cluster"
        if args.alias is not None:
            raise TargetError(f"--alias picks a CHANNEL_LAYERS entry and goes with --settings, not {source}")
        layer = args.layer or "core"
        hosts = _parse_hosts(args.hosts) if args.hosts else [_cluster_entry(args.cluster)]
        config: dict[str, Any] = {"hosts": hosts}
    else:
        if args.layer is not None:
            raise TargetError(
                "--layer goes with --hosts or --cluster; with settings, the BACKEND says which layer it is"
            )
        if not settings:
            settings = os.environ.get("DJANGO_SETTINGS_MODULE")
            if not settings:
                raise TargetError(
                    "say which layer to look at: --settings MODULE, --hosts URL ..., or set DJANGO_SETTINGS_MODULE"
                )
        alias = args.alias or DEFAULT_ALIAS
        layer, config = _from_settings(settings, alias)
        source = f"settings {settings}, CHANNEL_LAYERS[{alias!r}]"
    if args.prefix is not None:
        config["prefix"] = args.prefix
    config.setdefault("prefix", DEFAULT_PREFIX)
    # The command's own timeouts win over a policy in the settings: a check must not ride out a failure.
    config["policy"] = command_policy(args.timeout)
    try:
        instance = LAYERS[layer](**config)
    except (TypeError, ValueError, KeyError) as error:  # KeyError: an unknown serializer_format
        raise TargetError(f"{source}: {error}") from None
    return Target(
        layer=layer,
        prefix=instance.prefix,
        config={key: value for key, value in config.items() if key != "policy"},
        specs=tuple(instance.hosts),
        source=source,
        instance=instance,
    )


def _parse_hosts(values: Sequence[str]) -> list[Any]:
    """``--hosts`` values as a ``hosts`` setting: JSON objects become dicts, anything else stays a URL."""
    hosts: list[Any] = []
    for index, value in enumerate(values):
        if value.lstrip().startswith("{"):
            try:
                hosts.append(json.loads(value))
            except json.JSONDecodeError as error:
                # The value itself is not repeated: it may hold a password.
                raise TargetError(
                    f"--hosts entry {index} starts with '{{' but is not valid JSON ({error.msg} at column "
                    f"{error.colno}); write a Sentinel entry as "
                    '\'{"sentinels": [["HOST", 26379]], "master_name": "NAME"}\''
                ) from None
        else:
            hosts.append(value)
    return hosts


def _cluster_entry(values: Sequence[str]) -> dict[str, Any]:
    """``--cluster`` values as a cluster entry; the layer checks the URLs as it checks any cluster entry."""
    for index, value in enumerate(values):
        if value.lstrip().startswith(("{", "[")):
            # The value itself is not repeated: it may hold a password.
            raise TargetError(
                f"--cluster node {index} is not a URL: --cluster takes node URLs such as valkey://10.0.0.1:7000; "
                "for options a URL cannot carry (ssl_ca_certs, ...) give the whole entry to --hosts: "
                '\'{"cluster": ["valkeys://10.0.0.1:7000"], "ssl_ca_certs": "ca.pem"}\''
            )
    return {"cluster": list(values)}


def _from_settings(module_name: str, alias: str) -> tuple[str, dict[str, Any]]:
    """The layer name and a copy of the CONFIG of ``CHANNEL_LAYERS[alias]`` in the settings ``module_name``."""
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise TargetError(f"cannot import the settings module {module_name!r}: {error}") from None
    except Exception as error:
        raise TargetError(
            f"importing the settings module {module_name!r} failed: {type(error).__name__}: {error}"
        ) from None
    layers = getattr(module, "CHANNEL_LAYERS", None)
    if not isinstance(layers, Mapping):
        raise TargetError(f"the settings module {module_name!r} has no CHANNEL_LAYERS dict")
    entry = layers.get(alias)
    if not isinstance(entry, Mapping):
        known = ", ".join(repr(name) for name in layers) or "none"
        raise TargetError(f"CHANNEL_LAYERS of {module_name!r} has no entry {alias!r} (entries: {known})")
    backend = entry.get("BACKEND")
    layer = _layer_of_backend(backend, f"CHANNEL_LAYERS[{alias!r}]['BACKEND']")
    config = entry.get("CONFIG", {})
    if not isinstance(config, Mapping):
        raise TargetError(f"CHANNEL_LAYERS[{alias!r}]['CONFIG'] must be a dict, got {type(config).__name__}")
    return layer, dict(config)


def _layer_of_backend(backend: object, where: str) -> str:
    """Which of our layers ``backend`` (a dotted class path) is, subclasses included."""
    accepted = " or ".join(f"'{backend}'" for backend in BACKENDS.values())
    if not isinstance(backend, str) or "." not in backend:
        raise TargetError(f"{where} must be a dotted class path such as {accepted}, got {backend!r}")
    module_name, _, class_name = backend.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as error:
        raise TargetError(f"{where} = {backend!r} cannot be imported: {error}") from None
    for name, layer_class in LAYERS.items():
        if isinstance(cls, type) and issubclass(cls, layer_class):
            return name
    raise TargetError(f"{where} = {backend!r} is not a channels-valkey layer; expected {accepted}")

"""Every import path of channels-valkey 0.3 that we keep resolves, to the thing 0.3 code expects there.

0.3 is channels_redis 4 renamed, so ``channels_redis`` (installed as a test peer) stands in for it wherever a
signature is compared. Names of 0.3 that we do not keep are listed in packages/channels-valkey/README.md.
"""

from __future__ import annotations

import importlib
import inspect

import channels.exceptions
import channels_redis.utils
import pytest
from channels.layers import BaseChannelLayer
from django.utils.module_loading import import_string

from channels_valkey import utils

#: What 0.3 code imports, module by module, that we promise to keep.
KEPT = {
    "channels_valkey.core": ["ValkeyChannelLayer", "ChannelFull"],
    "channels_valkey.pubsub": ["ValkeyPubSubChannelLayer"],
    "channels_valkey.serializers": [
        "BaseMessageSerializer",
        "JSONSerializer",
        "MsgPackSerializer",
        "SerializerDoesNotExist",
        "SerializersRegistry",
        "registry",
    ],
    "channels_valkey.utils": [
        "_close_valkey",
        "_consistent_hash",
        "_wrap_close",
        "create_pool",
        "decode_hosts",
    ],
}

#: Each 0.3 helper and its channels_redis twin.
TWINS = {
    "_consistent_hash": channels_redis.utils._consistent_hash,
    "decode_hosts": channels_redis.utils.decode_hosts,
    "create_pool": channels_redis.utils.create_pool,
    "_close_valkey": channels_redis.utils._close_redis,
    "_wrap_close": channels_redis.utils._wrap_close,
}


@pytest.mark.parametrize(
    ("module", "name"), [(module, name) for module, names in KEPT.items() for name in names]
)
def test_each_kept_name_imports(module: str, name: str) -> None:
    assert getattr(importlib.import_module(module), name) is not None


def test_the_pubsub_module_imports() -> None:
    """``channels_valkey.pubsub`` exists; its layer class is the Pub/Sub package's to add."""
    assert importlib.import_module("channels_valkey.pubsub").__name__ == "channels_valkey.pubsub"


def test_the_backend_setting_of_0_3_resolves_to_a_channel_layer() -> None:
    layer_class = import_string("channels_valkey.core.ValkeyChannelLayer")
    assert issubclass(layer_class, BaseChannelLayer)


def test_core_channel_full_is_the_channels_exception() -> None:
    """0.3 code catches ``channels_valkey.core.ChannelFull``; it must be the one the layer raises (Channels')."""
    core = importlib.import_module("channels_valkey.core")
    assert core.ChannelFull is channels.exceptions.ChannelFull


@pytest.mark.parametrize("name", list(TWINS))
def test_helpers_take_the_arguments_0_3_took(name: str) -> None:
    ours = inspect.signature(getattr(utils, name))
    theirs = inspect.signature(TWINS[name])
    assert [(p.name, p.kind, p.default) for p in ours.parameters.values()] == [
        (p.name, p.kind, p.default) for p in theirs.parameters.values()
    ]
    assert inspect.iscoroutinefunction(getattr(utils, name)) == inspect.iscoroutinefunction(TWINS[name])


def test_star_import_gives_the_public_helpers() -> None:
    namespace: dict[str, object] = {}
    exec("from channels_valkey.utils import *", namespace)
    assert {name for name in namespace if not name.startswith("__")} == {"create_pool", "decode_hosts"}


def test_the_namespace_stays_pep_420() -> None:
    """No distribution may ship ``channels_valkey/__init__.py``, so 0.3's ``channels_valkey.__version__`` is gone."""
    namespace = importlib.import_module("channels_valkey")
    assert getattr(namespace, "__file__", None) is None
    assert not hasattr(namespace, "__version__")

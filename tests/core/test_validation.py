"""Bad input fails at the call with an exception naming the bad value, before anything reaches the server.

Channels' own name check lets a trailing newline through and accepts any Unicode letter after the "!"; the core
layer does not. Each test that calls the server checks afterwards that no key of the layer's prefix exists.
"""

from __future__ import annotations

import asyncio
import re
from typing import TYPE_CHECKING, Any

import pytest

from channels_valkey.core import ValkeyChannelLayer

if TYPE_CHECKING:
    from core.conftest import Topology

pytestmark = pytest.mark.parametrize("topology", ["single"], indirect=True)

#: Called within this time or the check did not run first (a receive on a valid name would block).
CALL_TIMEOUT = 5.0

BAD_CHANNELS: list[Any] = [
    "chat.room\n",  # Channels' own check (a "$" regex) accepts this
    "specific.abc!dé",  # and this: "\w" after the "!" is Unicode
    "ü.normal",
    "a" * 100,
    "specific." + "a" * 80 + "!" + "b" * 20,
    "has space",
    "",
    "two!bangs!here",
    "star*",
    123,
    b"bytes.name",
    None,
]

BAD_GROUPS: list[Any] = [
    "group\n",
    "grüppe",
    "g" * 100,
    "with space",
    "",
    "has!bang",
    5,
    b"bytes-group",
    None,
]


def _names(value: Any) -> str:
    """A pattern matching the error's mention of ``value``."""
    return re.escape(repr(value))


def _no_keys(topology: Topology, layer: ValkeyChannelLayer) -> None:
    assert topology.keys(layer.prefix) == []


async def _call(awaitable: Any) -> None:
    await asyncio.wait_for(awaitable, CALL_TIMEOUT)


# Names -------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("channel", BAD_CHANNELS, ids=repr)
async def test_bad_channel_name(layer: ValkeyChannelLayer, topology: Topology, channel: Any) -> None:
    with pytest.raises(TypeError, match=_names(channel)):
        await _call(layer.send(channel, {"type": "bad"}))
    with pytest.raises(TypeError, match=_names(channel)):
        await _call(layer.receive(channel))
    with pytest.raises(TypeError, match=_names(channel)):
        await _call(layer.group_add("good-group", channel))
    with pytest.raises(TypeError, match=_names(channel)):
        await _call(layer.group_discard("good-group", channel))
    _no_keys(topology, layer)


@pytest.mark.parametrize("group", BAD_GROUPS, ids=repr)
async def test_bad_group_name(layer: ValkeyChannelLayer, topology: Topology, group: Any) -> None:
    with pytest.raises(TypeError, match=_names(group)):
        await _call(layer.group_add(group, "good.channel"))
    with pytest.raises(TypeError, match=_names(group)):
        await _call(layer.group_discard(group, "good.channel"))
    with pytest.raises(TypeError, match=_names(group)):
        await _call(layer.group_send(group, {"type": "bad"}))
    with pytest.raises(TypeError, match=_names(group)):
        await _call(layer.group_channels(group))
    _no_keys(topology, layer)


async def test_longest_valid_names_are_accepted(layer: ValkeyChannelLayer) -> None:
    channel, group = "c" * 99, "g" * 99
    await layer.group_add(group, channel)
    assert await layer.group_channels(group) == [channel]


async def test_new_channel_with_bad_prefix(layer: ValkeyChannelLayer, topology: Topology) -> None:
    with pytest.raises(TypeError, match="bad prefix"):
        await layer.new_channel(prefix="bad prefix")
    with pytest.raises(TypeError, match="x" * 40):
        await layer.new_channel(prefix="x" * 40)  # the whole name would be 100 characters or more
    _no_keys(topology, layer)


# Messages ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("message", [["type", "list"], "text", None, b"bytes"], ids=repr)
async def test_message_not_a_dict(layer: ValkeyChannelLayer, topology: Topology, message: Any) -> None:
    with pytest.raises(TypeError, match=type(message).__name__):
        await layer.send("good.channel", message)
    await layer.group_add("good-group", "good.channel")
    with pytest.raises(TypeError, match=type(message).__name__):
        await layer.group_send("good-group", message)
    assert topology.count(layer.prefix + "good.channel") == 0


async def test_message_with_reserved_key(layer: ValkeyChannelLayer, topology: Topology) -> None:
    message = {"type": "sneaky", "__asgi_channel__": "other.channel"}
    with pytest.raises(ValueError, match="__asgi_channel__"):
        await layer.send("good.channel", message)
    with pytest.raises(ValueError, match="__asgi_channel__"):
        await layer.send(await layer.new_channel(), message)
    await layer.group_add("good-group", "good.channel")
    with pytest.raises(ValueError, match="__asgi_channel__"):
        await layer.group_send("good-group", message)
    assert topology.count(layer.prefix + "good.channel") == 0
    assert message == {"type": "sneaky", "__asgi_channel__": "other.channel"}


# Settings ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["capcity", "host", "expiry_seconds"])
def test_unknown_setting(hosts: list[Any], key: str) -> None:
    # CHANNEL_LAYERS["default"]["CONFIG"] is passed as keyword arguments.
    config = {"hosts": hosts, key: 10}
    with pytest.raises(TypeError, match=re.escape(repr(key))):
        ValkeyChannelLayer(**config)


@pytest.mark.parametrize("setting", ["capacity", "expiry", "group_expiry"])
@pytest.mark.parametrize("value", [0, -3, 2.5, "10", True, None], ids=repr)
def test_bad_number_setting(hosts: list[Any], setting: str, value: Any) -> None:
    with pytest.raises(ValueError, match=rf"{setting}.*{re.escape(repr(value))}"):
        ValkeyChannelLayer(hosts=hosts, **{setting: value})


@pytest.mark.parametrize("value", [0, -1, 1.5, "5"], ids=repr)
def test_bad_channel_capacity_value(hosts: list[Any], value: Any) -> None:
    with pytest.raises(ValueError, match=rf"channel_capacity.*{re.escape(repr(value))}"):
        ValkeyChannelLayer(hosts=hosts, channel_capacity={"chat.*": value})


@pytest.mark.parametrize("pattern", [5, None, b"chat.*"], ids=repr)
def test_bad_channel_capacity_pattern(hosts: list[Any], pattern: Any) -> None:
    with pytest.raises(TypeError, match=rf"channel_capacity.*{re.escape(repr(pattern))}"):
        ValkeyChannelLayer(hosts=hosts, channel_capacity={pattern: 3})


@pytest.mark.parametrize("value", ["12", 1.5, True, None], ids=repr)
def test_bad_random_prefix_length(hosts: list[Any], value: Any) -> None:
    # Checked by the serializer, as every serializer setting is: a bad value of any kind is a ValueError.
    with pytest.raises(ValueError, match=rf"random_prefix_length.*{re.escape(repr(value))}"):
        ValkeyChannelLayer(hosts=hosts, random_prefix_length=value)


@pytest.mark.parametrize("value", [0, -1, -12], ids=repr)
def test_random_prefix_length_of_zero_or_less_means_no_prefix(hosts: list[Any], value: int) -> None:
    layer = ValkeyChannelLayer(hosts=hosts, random_prefix_length=value)
    plain = ValkeyChannelLayer(hosts=hosts, random_prefix_length=12)
    message = {"type": "no.prefix", "n": 1}
    # The bytes are the bare serialized message, as channels-valkey 0.3 stores them with this setting.
    assert layer.serialize(message) == plain.serialize(message)[12:]
    assert layer.deserialize(layer.serialize(message)) == message


@pytest.mark.parametrize("prefix", [b"asgi", None, 7], ids=repr)
def test_prefix_not_str(hosts: list[Any], prefix: Any) -> None:
    with pytest.raises(TypeError, match=rf"prefix.*{re.escape(repr(prefix))}"):
        ValkeyChannelLayer(hosts=hosts, prefix=prefix)


def test_unknown_serializer_format(hosts: list[Any]) -> None:
    with pytest.raises(KeyError, match="yaml"):
        ValkeyChannelLayer(hosts=hosts, serializer_format="yaml")


def test_good_settings_are_kept(hosts: list[Any]) -> None:
    layer = ValkeyChannelLayer(
        hosts=hosts, prefix="p", expiry=5, group_expiry=7, capacity=9, channel_capacity={"a.*": 2}
    )
    assert (layer.prefix, layer.expiry, layer.group_expiry, layer.capacity) == ("p", 5, 7, 9)
    assert layer.get_capacity("a.b") == 2
    assert layer.get_capacity("b") == 9

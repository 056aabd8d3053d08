"""The key layouts the core layer documents (``queue_key_layout``, ``group_key_layout``), checked against the keys
it writes: tools such as ``channels-valkey inspect`` read names back from keys through them alone."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from channels_valkey.core import ValkeyChannelLayer

if TYPE_CHECKING:
    from core.conftest import Topology

# The two layouts there are: plain keys, and hash-tagged keys on a cluster.
pytestmark = pytest.mark.parametrize("topology", ["single", "cluster"], indirect=True)


def _name_in(layout: tuple[str, str], key: str) -> str | None:
    head, tail = layout
    if len(key) > len(head) + len(tail) and key.startswith(head) and key.endswith(tail):
        return key[len(head) : len(key) - len(tail)]
    return None


async def test_layouts_are_those_of_queue_key_and_group_key(layer: ValkeyChannelLayer) -> None:
    head, tail = layer.queue_key_layout
    assert layer.queue_key("layout.normal") == head + "layout.normal" + tail
    assert layer.queue_key("layout.process!abc") == head + "layout.process!" + tail
    head, tail = layer.group_key_layout
    assert layer.group_key("layout-room") == head + "layout-room" + tail


async def test_every_key_on_the_server_reads_back_to_its_name(
    layer: ValkeyChannelLayer, topology: Topology
) -> None:
    process = await layer.new_channel()
    await layer.send("layout.normal", {"type": "layout"})
    await layer.send(process, {"type": "layout"})
    await layer.group_add("layout-room", "layout.member")

    groups: list[str] = []
    queues: list[str] = []
    for raw in topology.keys(layer.prefix):
        key = raw.decode()
        group = _name_in(layer.group_key_layout, key)  # first: outside a cluster it fits the queue layout too
        if group is not None:
            groups.append(group)
        else:
            queue = _name_in(layer.queue_key_layout, key)
            assert queue is not None, f"{key!r} fits neither documented layout"
            queues.append(queue)
    assert groups == ["layout-room"]
    assert sorted(queues) == sorted(["layout.normal", process[: process.index("!") + 1]])

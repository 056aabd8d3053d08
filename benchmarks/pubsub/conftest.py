"""The Pub/Sub layer's benchmark suite: its targets (issue #6) and its layers; the rest is in
benchmarks/conftest.py."""

from __future__ import annotations

import functools
from typing import Any

import pytest

#: Row name of the ratio table -> its target (the keyword arguments of ``Target`` in benchmarks/conftest.py).
#: Normal channels have no target: ours carries them on a queue so that each message reaches one process, the
#: peer publishes them to every process that listens, so the two do different work.
TARGETS: dict[str, dict[str, Any]] = {
    "1a send+receive process sequential": {"unit": "messages/s", "higher_is_better": True, "ratio": 1.5},
    "1b send+receive process concurrent": {"unit": "messages/s", "higher_is_better": True, "ratio": 1.5},
    "1c send+receive normal sequential": {"unit": "messages/s", "higher_is_better": True},
    "1d send+receive normal concurrent": {"unit": "messages/s", "higher_is_better": True},
    "1e send+receive normal sequential, both on Pub/Sub": {"unit": "messages/s", "higher_is_better": True},
    "1f normal, two instances, window of 50": {"unit": "messages/s", "higher_is_better": True},
    "1g process, two instances, window of 50": {"unit": "messages/s", "higher_is_better": True},
    "2 process round trip p50": {"unit": "us", "higher_is_better": False, "ratio": 2 / 3},
    "2 process round trip p99": {"unit": "us", "higher_is_better": False},
    # A PUBLISH and the pushed message on two bare connections, before each round of either side: the part of a
    # round trip no layer can save; and each side's p50 less it, what the layer itself adds (Pub/Sub README).
    "2 process round trip p50, a bare client (the floor)": {"unit": "us", "higher_is_better": False},
    "2 process round trip p50 above the floor": {"unit": "us", "higher_is_better": False},
    "3 group_send to 10 process channels": {"unit": "deliveries/s", "higher_is_better": True, "ratio": 1.0},
    "3 group_send to 100 process channels": {"unit": "deliveries/s", "higher_is_better": True, "ratio": 1.0},
    "3 group_send to 1000 process channels": {"unit": "deliveries/s", "higher_is_better": True, "ratio": 1.0},
    # Each side's median round less the same gather of timed receives with nothing behind them, per member: what
    # the layer itself costs a member's delivery (see "Group fan-out" in the Pub/Sub README).
    **{
        f"3 group_send to {members}, per member above the floor": {
            "unit": "us",
            "higher_is_better": False,
            "decimals": 2,
        }
        for members in (10, 100, 1000)
    },
    "4 client CPU per message": {"unit": "us", "higher_is_better": False, "decimals": 1},
    "5 churn memory growth": {"unit": "KiB", "higher_is_better": False, "below": 1024.0, "decimals": 1},
    "5 churn Pub/Sub channels left": {"unit": "channels", "higher_is_better": False, "below": 1.0},
}


@pytest.fixture(scope="session")
def report(target_report: Any) -> Any:
    return target_report("pubsub", issue=6, subject="Pub/Sub layer", targets=TARGETS)


#: The issue asks for the figures "while the features above are on": both sides are built with the notices set
#: (ours sends them, the peer accepts and ignores them).
NOTICES = {"on_disconnect": "layer.disconnect", "on_reconnect": "layer.reconnect"}


@pytest.fixture
def layer_classes() -> Any:
    # Ours is imported when a layer is first made, so the peer's half runs even where ours does not import.
    def classes() -> tuple[Any, Any]:
        from channels_redis.pubsub import RedisPubSubChannelLayer

        from channels_valkey.pubsub import ValkeyPubSubChannelLayer

        return (
            functools.partial(ValkeyPubSubChannelLayer, **NOTICES),
            functools.partial(RedisPubSubChannelLayer, **NOTICES),
        )

    return classes

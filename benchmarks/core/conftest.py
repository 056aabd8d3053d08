"""The core layer's benchmark suite: its targets (issue #5) and its layers; the rest is in benchmarks/conftest.py."""

from __future__ import annotations

from typing import Any

import pytest

#: Row name of the ratio table -> its target (the keyword arguments of ``Target`` in benchmarks/conftest.py).
TARGETS: dict[str, dict[str, Any]] = {
    "1a send+receive sequential": {"unit": "messages/s", "higher_is_better": True, "ratio": 5.0},
    "1b send+receive concurrent": {"unit": "messages/s", "higher_is_better": True, "ratio": 5.0},
    "1c normal, two instances, window of 50": {"unit": "messages/s", "higher_is_better": True},
    "1d process, two instances, window of 50": {"unit": "messages/s", "higher_is_better": True},
    "2 process round trip p50": {"unit": "us", "higher_is_better": False, "ratio": 1 / 3},
    "2 process round trip p99": {"unit": "us", "higher_is_better": False},
    "2b process round trip, receipts off p50": {"unit": "us", "higher_is_better": False, "ratio": 1 / 3},
    "2b process round trip, receipts off p99": {"unit": "us", "higher_is_better": False},
    "3 group_send 100 process channels": {"unit": "deliveries/s", "higher_is_better": True, "ratio": 3.0},
    "3 group_send 100 normal channels": {"unit": "deliveries/s", "higher_is_better": True, "ratio": 3.0},
    "4 backlog drain 2000": {"unit": "messages/s", "higher_is_better": True, "ratio": 5.0},
    "5 client CPU per message": {"unit": "us", "higher_is_better": False, "ratio": 1 / 4, "decimals": 1},
    "6 soak memory growth": {"unit": "KiB", "higher_is_better": False, "below": 1024.0, "decimals": 1},
    "6 soak keys left": {"unit": "keys", "higher_is_better": False, "below": 1.0},
}


@pytest.fixture(scope="session")
def report(target_report: Any) -> Any:
    return target_report("core", issue=5, subject="core layer", targets=TARGETS)


@pytest.fixture
def layer_classes() -> Any:
    def classes() -> tuple[type, type]:
        from channels_redis.core import RedisChannelLayer

        from channels_valkey.core import ValkeyChannelLayer

        return ValkeyChannelLayer, RedisChannelLayer

    return classes

"""group_send_many of 1,000 groups against a loop of 1,000 group_send calls, ours and channels_redis 4's (which has
no bulk call), on the same server in the same run: the target of issue #17 (at least 10 times as fast).

Run: ``hatch run bench:run benchmarks/pubsub -k many``. The measuring is ``bulk_group_sends`` in
benchmarks/conftest.py; every member receives its messages after each round and checks them (numbers in order).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

GROUPS = 1000
#: Process channels the groups' members are (group i has member i % MEMBERS): consumers in many rooms each.
MEMBERS = 10
ROUNDS = 10
BULK_ROW = "1 group_send_many 1000 groups (channels_redis: a loop)"
LOOP_ROW = "2 a loop of 1000 group_send"
#: The issue's target: group_send_many against our own loop, whose figure stands in the channels_redis column.
OWN_ROW = "3 group_send_many / our own loop (in the peer's column)"

TARGETS: dict[str, dict[str, Any]] = {
    BULK_ROW: {"unit": "groups/s", "higher_is_better": True},
    LOOP_ROW: {"unit": "groups/s", "higher_is_better": True},
    OWN_ROW: {"unit": "groups/s", "higher_is_better": True, "ratio": 10.0},
}


@pytest.fixture(scope="session")
def report(target_report: Any) -> Any:
    return target_report("pubsub-many", issue=17, subject="Pub/Sub layer, bulk sends", targets=TARGETS)


@pytest.mark.benchmark(group="group_send_many 1000 groups")
def test_group_send_many(bulk_group_sends: Callable[..., None]) -> None:
    bulk_group_sends(groups=GROUPS, members=MEMBERS, rounds=ROUNDS, rows=(BULK_ROW, LOOP_ROW, OWN_ROW))

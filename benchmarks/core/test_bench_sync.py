"""Sending from sync code (issue #17): ``group_send`` called from a thread with no event loop, as a Django view or a
Celery task calls it, ours and channels_redis 4's on the same server in the same run: a single server, then a
Sentinel group (primary, replica, three Sentinels).

Targets, on both: ``async_to_sync(layer.group_send)`` at least 2x the calls/s of before (channels-valkey 0.3 and
ours before connections were parked made one connection per call, as channels_redis still does: its figure stands
for "before") with at most 0.05 new server connections per call (on Sentinel hosts, to the primary and the
Sentinels together); ``layer.sync.group_send`` at least 5x channels_redis's ``async_to_sync``.

Run: ``hatch run bench:run benchmarks/core -k sync``. The measuring is ``sync_group_sends`` in
benchmarks/conftest.py.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

CALLS = 200
ROUNDS = 7
A2S_ROW = "1 async_to_sync(group_send)"
SYNC_ROW = "2 layer.sync.group_send (peer: async_to_sync)"
CONNECTIONS_ROW = "3 new connections per async_to_sync call"
SENTINEL_A2S_ROW = "4 async_to_sync(group_send), Sentinel hosts"
SENTINEL_SYNC_ROW = "5 layer.sync.group_send, Sentinel hosts (peer: async_to_sync)"
SENTINEL_CONNECTIONS_ROW = "6 new connections per async_to_sync call, Sentinel hosts (primary and Sentinels)"

TARGETS: dict[str, dict[str, Any]] = {
    A2S_ROW: {"unit": "calls/s", "higher_is_better": True, "ratio": 2.0},
    SYNC_ROW: {"unit": "calls/s", "higher_is_better": True, "ratio": 5.0},
    CONNECTIONS_ROW: {"unit": "conn/call", "higher_is_better": False, "below": 0.05, "decimals": 3},
    SENTINEL_A2S_ROW: {"unit": "calls/s", "higher_is_better": True, "ratio": 2.0},
    SENTINEL_SYNC_ROW: {"unit": "calls/s", "higher_is_better": True, "ratio": 5.0},
    SENTINEL_CONNECTIONS_ROW: {"unit": "conn/call", "higher_is_better": False, "below": 0.05, "decimals": 3},
}


@pytest.fixture(scope="session")
def report(target_report: Any) -> Any:
    return target_report("core-sync", issue=17, subject="core layer, calls from sync code", targets=TARGETS)


@pytest.mark.benchmark(group="group_send from sync code")
def test_sync_group_send(sync_group_sends: Callable[..., None]) -> None:
    sync_group_sends(calls=CALLS, rounds=ROUNDS, rows=(A2S_ROW, SYNC_ROW, CONNECTIONS_ROW))


@pytest.mark.benchmark(group="group_send from sync code, Sentinel hosts")
# channels_redis leaves each async_to_sync call's Sentinel connections to the garbage collector (unclosed
# transports, sockets); ours closes or parks everything (tests/sentinel/test_sync_calls.py checks it).
@pytest.mark.filterwarnings("ignore::ResourceWarning", "ignore::pytest.PytestUnraisableExceptionWarning")
def test_sync_group_send_on_sentinel_hosts(
    collect_garbage_last: None,
    sync_group_sends: Callable[..., None],
    make_layers: Callable[..., dict[str, Any]],
    sentinel_group: Any,
) -> None:
    # Both sides on the session's Sentinel group: a call's connections to the primary and to the Sentinels count.
    sync_group_sends(
        calls=CALLS,
        rounds=ROUNDS,
        rows=(SENTINEL_A2S_ROW, SENTINEL_SYNC_ROW, SENTINEL_CONNECTIONS_ROW),
        pair=make_layers(hosts=[sentinel_group.host_entry()]),
        servers=[sentinel_group.current_primary(), *sentinel_group.sentinels],
    )

"""``PerLoop``: each event loop's entry, the last one found remembered, nothing kept for a loop that is gone."""

from __future__ import annotations

import asyncio
import gc

from channels_valkey.sentinel import PerLoop


def test_each_loop_finds_its_own_entry() -> None:
    first, second = asyncio.new_event_loop(), asyncio.new_event_loop()
    try:
        entries: PerLoop[str] = PerLoop()
        assert entries.get(first) is None
        assert entries.put(first, "first") == "first"
        assert entries.put(second, "second") == "second"
        for _ in range(2):  # the remembered entry is the other loop's every other time
            assert entries.get(first) == "first"
            assert entries.get(second) == "second"
        assert sorted(entries.values()) == ["first", "second"]
        assert len(entries) == 2
    finally:
        first.close()
        second.close()


def test_a_popped_entry_is_not_found_again_even_right_after_a_lookup() -> None:
    loop = asyncio.new_event_loop()
    try:
        entries: PerLoop[str] = PerLoop()
        entries.put(loop, "old")
        assert entries.get(loop) == "old"
        assert entries.pop(loop) == "old"
        assert entries.get(loop) is None
        assert entries.pop(loop) is None
        entries.put(loop, "new")
        assert entries.get(loop) == "new"
    finally:
        loop.close()


def test_the_entry_of_a_collected_loop_goes_with_it() -> None:
    entries: PerLoop[object] = PerLoop()
    loop = asyncio.new_event_loop()
    entries.put(loop, object())
    assert entries.get(loop) is not None
    loop.close()
    del loop
    gc.collect()
    assert len(entries) == 0
    assert entries.values() == []
    fresh = asyncio.new_event_loop()  # may reuse the collected loop's address: still nothing for it
    try:
        assert entries.get(fresh) is None
    finally:
        fresh.close()

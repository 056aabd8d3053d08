"""What both layers share through this package: name, message and option checks, drop counters, the codec.

The layers' own suites run these through every call; here each piece is held to what it promises on its own,
without a server: the exceptions and messages, and that the codec counts and logs what it cannot read.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import pytest

from channels_valkey.sentinel import (
    DropCounters,
    MessageCodec,
    ResiliencePolicy,
    check_channel,
    check_channel_capacity,
    check_group,
    check_message,
    check_policy,
    check_prefix,
    check_whole_number,
    checked_pairs,
    is_process_channel,
    non_local_name,
)
from channels_valkey.serializers import registry


def test_names_are_checked_strictly_and_quoted() -> None:
    assert check_channel("chat.room") == "chat.room"
    assert check_channel("specific.abc!" + "x" * 86) == "specific.abc!" + "x" * 86
    assert check_group("g" * 99) == "g" * 99
    for bad in ["trailing\n", "x" * 100, "two!bangs!", "ü", "", 5]:
        with pytest.raises(TypeError, match=r"invalid channel name " + re.escape(repr(bad))):
            check_channel(bad)
    for bad in ["has!bang", "g" * 100, "with space", None]:
        with pytest.raises(TypeError, match=r"invalid group name " + re.escape(repr(bad))):
            check_group(bad)


def test_a_channel_name_is_judged_the_same_every_time() -> None:
    """Valid names are remembered (a process sends to the same channels over and over): a bad name stays bad on
    every call, an unhashable one gets the same error as any other, and a str subclass is checked for itself."""
    for _ in range(3):
        assert check_channel("chat.room") == "chat.room"
        for bad in ["two!bangs!", "x" * 100, ["chat.room"], _Name("with space")]:
            with pytest.raises(TypeError, match=r"invalid channel name " + re.escape(repr(bad))):
                check_channel(bad)
    assert check_channel(_Name("sub.name")) == "sub.name"


def test_messages_are_dicts_without_the_reserved_key() -> None:
    check_message({"type": "ok"})
    with pytest.raises(TypeError, match=r"message must be a dict, not list \['type'\]"):
        check_message(["type"])
    with pytest.raises(ValueError, match="__asgi_channel__"):
        check_message({"type": "x", "__asgi_channel__": "elsewhere"})


class _Name(str):
    """A str subclass: still a name."""


class _Message(dict):  # type: ignore[type-arg]
    """A dict subclass: still a message."""


@pytest.mark.parametrize("check", [check_channel, check_group])
def test_checked_pairs_accept_and_refuse_what_the_single_checks_do(check: Any) -> None:
    """Bulk calls test the usual pairs all at once, without calling the checks: the same names and messages pass,
    and a bad one raises the single check's exception, naming the pair."""
    names: list[Any] = ["chat.room", "g" * 99, "g" * 100, "trailing\n", "two\nlines", "\n", "ü", "", "a b"]
    names += ["a!b", "a!", "a!b!c", "!b", 5, None, _Name("sub.name")]
    messages: list[Any] = [{"type": "x"}, _Message(type="y"), {"__asgi_channel__": "x"}, ["type"], None]
    for name in names:
        for message in messages:
            for pair in [(name, message), [name, message]]:
                try:
                    check(name)
                    check_message(message)
                except (TypeError, ValueError) as error:
                    expected = r"^bulk: pairs\[1\]: " + re.escape(str(error)) + "$"
                    with pytest.raises(type(error), match=expected):
                        checked_pairs([("chat.room", {}), pair], check, "bulk")
                else:
                    good = ("chat.room", {})
                    assert checked_pairs([good, pair], check, "bulk") == [good, (name, message)]
                    assert checked_pairs(iter([pair] * 3), check, "bulk") == [(name, message)] * 3
    assert checked_pairs([], check, "bulk") == []


def test_process_channels_share_their_non_local_name() -> None:
    assert is_process_channel("specific.abc!def")
    assert not is_process_channel("chat.room")
    assert non_local_name("specific.abc!def") == "specific.abc!"
    assert non_local_name("chat.room") == "chat.room"


def test_option_checks_name_the_option_and_the_value() -> None:
    assert check_prefix("asgi") == "asgi"
    assert check_prefix("app{1}") == "app{1}"  # braces are plain text off a cluster
    with pytest.raises(TypeError, match="prefix must be a str, not 5"):
        check_prefix(5)
    with pytest.raises(
        ValueError, match=r"prefix 'app\{1\}' cannot hold '\{' or '\}' on a Valkey Cluster: why"
    ):
        check_prefix("app{1}", cluster=True, why="why")
    assert check_whole_number("capacity", 1) == 1
    for bad in [0, -1, 1.5, True, "3"]:
        with pytest.raises(
            ValueError, match=rf"capacity must be a whole number >= 1, not {re.escape(repr(bad))}"
        ):
            check_whole_number("capacity", bad)
    pattern = re.compile("^chat")
    assert check_channel_capacity(None) == {}
    assert check_channel_capacity({"http.*": 10, pattern: 5}) == {"http.*": 10, pattern: 5}
    with pytest.raises(
        TypeError, match="channel_capacity keys must be glob strings or compiled regexes, not 3"
    ):
        check_channel_capacity({3: 10})
    with pytest.raises(ValueError, match=r"channel_capacity\['x'\] must be a whole number >= 1, not 0"):
        check_channel_capacity({"x": 0})
    policy = ResiliencePolicy()
    assert check_policy(policy) is policy
    assert check_policy(None) is None
    with pytest.raises(
        TypeError, match=r"policy must be a channels_valkey\.sentinel\.ResiliencePolicy, not 'fast'"
    ):
        check_policy("fast")


def test_drop_counters_have_every_reason() -> None:
    counters = DropCounters(expired=1)
    counters.undecodable += 2
    assert counters.as_dict() == {
        "expired": 1,
        "undecodable": 2,
        "group_over_capacity": 0,
        "buffer_overflow": 0,
    }


def test_the_codec_counts_and_logs_what_it_cannot_read(caplog: pytest.LogCaptureFixture) -> None:
    counters = DropCounters()
    codec = MessageCodec(registry.get_serializer("msgpack"), counters, logging.getLogger("shared.test"))
    message: dict[str, Any] = {"type": "hello", "n": 1}
    data = codec.encode(message)
    assert codec.read(data) == message
    assert codec.decode(data) == message
    with caplog.at_level(logging.WARNING, logger="shared.test"):
        assert codec.decode(b"\xc1 not msgpack") is None
        assert codec.decode(b"\xc1", "chat.room") is None
    assert counters.undecodable == 2
    assert [record.getMessage().split(":")[0] for record in caplog.records] == [
        "skipped a message that cannot be read",
        "skipped a message for chat.room that cannot be read",
    ]
    with pytest.raises(ValueError, match="cannot read message"):
        codec.read(b"\xc1")

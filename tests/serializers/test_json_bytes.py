"""JSON carries bytes without changing a single byte of what the peers can already write.

The peers' JSON serializer is ``json.dumps(message).encode()``: pure ASCII, and it raises on bytes. Ours writes
exactly that whenever it can, and only for messages holding bytes writes an envelope that starts with the UTF-8
byte-order mark, which ASCII output never contains.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from channels_valkey.serializers import JSONSerializer
from channels_valkey.serializers.json_format import BYTES_ENVELOPE_MARK


def test_messages_without_bytes_are_exactly_json_dumps(every_json_type: dict[str, Any]) -> None:
    assert JSONSerializer().serialize(every_json_type) == json.dumps(every_json_type).encode("utf-8")


def test_json_output_without_bytes_is_ascii_so_it_never_starts_with_the_mark(
    every_json_type: dict[str, Any],
) -> None:
    data = JSONSerializer().serialize(every_json_type)
    assert data.isascii()
    assert not data.startswith(BYTES_ENVELOPE_MARK)


def test_bytes_anywhere_in_a_message_come_back_as_bytes() -> None:
    message = {
        "type": "file.chunk",
        "bytes": b"\x00\xffraw",
        "parts": [b"", {"inner": b"\x01", "text": "not bytes"}, [b"deep"]],
        "text": "stays a str",
    }
    serializer = JSONSerializer(random_prefix_length=12)
    data = serializer.serialize(message)
    assert data[12:].startswith(BYTES_ENVELOPE_MARK)
    result = serializer.deserialize(data)
    assert result == message
    assert type(result["parts"][2][0]) is bytes
    assert type(result["text"]) is str


def test_the_envelope_is_readable_json_that_says_where_the_bytes_were() -> None:
    data = JSONSerializer().serialize({"type": "x", "b": b"\x00\x01", "l": [b"\xff"]})
    envelope = json.loads(data[len(BYTES_ENVELOPE_MARK) :])
    assert envelope == {
        "channels_valkey_bytes": 1,
        "message": {"type": "x", "b": "AAE=", "l": ["/w=="]},
        "bytes_at": [["b"], ["l", 0]],
    }


def test_a_plain_message_that_looks_like_an_envelope_is_left_alone() -> None:
    lookalike = {"channels_valkey_bytes": 1, "message": {"b": "AAE="}, "bytes_at": [["message", "b"]]}
    serializer = JSONSerializer()
    data = serializer.serialize(lookalike)
    assert data == json.dumps(lookalike).encode()
    assert serializer.deserialize(data) == lookalike


def test_bytes_under_non_str_keys_are_found_after_json_turns_the_keys_into_str() -> None:
    message = {"type": "x", "by_id": {7: b"seven", 2.5: b"half", None: b"none", True: b"yes"}}
    result = JSONSerializer().deserialize(JSONSerializer().serialize(message))
    assert result == {"type": "x", "by_id": {"7": b"seven", "2.5": b"half", "null": b"none", "true": b"yes"}}


def test_format_options_bypass_the_envelope_like_json_dumps_would() -> None:
    with pytest.raises(TypeError):
        JSONSerializer.as_bytes({"b": b"x"}, sort_keys=True)


@pytest.mark.parametrize("size", [10, 100_000])
def test_everything_json_loads_reads_is_read(size: int) -> None:
    # Small bodies go to json.loads as bytes, large ones are decoded from a memoryview: both read what json.loads
    # reads, including UTF-16 and a UTF-8 byte-order mark in front of plain JSON.
    message = {"type": "x", "text": "é" * size}
    serializer = JSONSerializer(random_prefix_length=4)
    for encoded in (
        json.dumps(message).encode("utf-16"),
        json.dumps(message, ensure_ascii=False).encode("utf-8"),
        BYTES_ENVELOPE_MARK + json.dumps(message).encode(),
    ):
        assert serializer.deserialize(b"pref" + encoded) == message

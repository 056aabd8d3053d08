"""JSON, byte-identical to the peers for every message they can write, and able to carry bytes as well.

The peers' JSON serializer is ``json.dumps(message).encode()``; it raises on ``bytes``. This one writes exactly
those bytes whenever ``json.dumps`` succeeds. Only when a message holds bytes (which no peer can send) does it
write an envelope: the UTF-8 byte-order mark (EF BB BF), then
``{"channels_valkey_bytes": 1, "message": ..., "bytes_at": [[key or index, ...], ...]}`` where each bytes
value is a base64 string and ``bytes_at`` lists where they are. The peers' output is pure ASCII
(``ensure_ascii``), so it never starts with that mark: nothing a peer writes can be mistaken for an envelope.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any, cast

from channels_valkey.serializers.base import BaseMessageSerializer
from channels_valkey.serializers.diagnose import (
    find_problem,
    format_path,
    json_key_problem,
    json_value_problem,
)
from channels_valkey.serializers.exceptions import MessageEncodeError

__all__ = ["BYTES_ENVELOPE_MARK", "JSONSerializer"]

#: The first bytes of a JSON message that carries bytes values; never the start of a peer's JSON.
BYTES_ENVELOPE_MARK = b"\xef\xbb\xbf"
_ENVELOPE_VERSION_KEY = "channels_valkey_bytes"
_BYTES_TYPES = (bytes, bytearray, memoryview)
# json.dumps with no options, minus two costs that do not change a byte of the output: dumps' option checks, and
# the circular-reference bookkeeping on every container. A circular message then ends in RecursionError instead
# of ValueError, and find_problem() names the loop either way.
_ENCODER = json.JSONEncoder(check_circular=False)

PathStep = str | int


def _json_key(key: object) -> str:
    """The string ``json.dumps`` writes for a dict key (it accepts str, int, float, bool and None)."""
    if isinstance(key, str):
        return key
    if key is None or isinstance(key, (bool, float)):
        return json.dumps(key)
    return int.__repr__(cast(int, key))


def _swap_bytes(value: Any, path: list[PathStep], found: list[list[PathStep]], ancestors: set[int]) -> Any:
    """A copy of ``value`` with each bytes value replaced by its base64 text, noting where each one was."""
    if isinstance(value, _BYTES_TYPES):
        found.append(list(path))
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, (dict, list, tuple)):
        if id(value) in ancestors:
            raise ValueError("circular reference")
        ancestors.add(id(value))
        try:
            if isinstance(value, dict):
                copy: Any = {}
                for key, item in value.items():
                    path.append(_json_key(key) if json_key_problem(key) is None else key)
                    copy[key] = _swap_bytes(item, path, found, ancestors)
                    path.pop()
                return copy
            items = []
            for index, item in enumerate(value):
                path.append(index)
                items.append(_swap_bytes(item, path, found, ancestors))
                path.pop()
            return items
        finally:
            ancestors.discard(id(value))
    return value


def _encode_error(message: Any, exc: BaseException) -> MessageEncodeError:
    problem = find_problem(message, json_value_problem, json_key_problem)
    if problem is not None:
        path, reason = problem
        where = format_path(path)
        return MessageEncodeError(f"cannot serialize {where}: it {reason}", where)
    if isinstance(exc, RecursionError):
        return MessageEncodeError("cannot serialize the message: it is nested too deeply for the json module")
    return MessageEncodeError(f"json cannot serialize the message: {type(exc).__name__}: {exc}")


def _with_bytes(message: Any, exc: BaseException) -> bytes:
    """The envelope for a message that json.dumps refused; a clear error if bytes were not the reason."""
    if find_problem(message, json_value_problem, json_key_problem) is not None:
        raise _encode_error(message, exc) from exc
    found: list[list[PathStep]] = []
    try:
        swapped = _swap_bytes(message, [], found, set())
        if not found:
            raise _encode_error(message, exc) from exc
        text = _ENCODER.encode({_ENVELOPE_VERSION_KEY: 1, "message": swapped, "bytes_at": found})
    except (TypeError, ValueError, RecursionError) as again:
        raise _encode_error(message, again) from again
    return BYTES_ENVELOPE_MARK + text.encode("utf-8")


def _open_envelope(data: bytes | memoryview) -> Any:
    """The message inside an envelope, its base64 strings turned back into bytes."""
    envelope = json.loads(bytes(data[len(BYTES_ENVELOPE_MARK) :]))
    if not isinstance(envelope, dict) or _ENVELOPE_VERSION_KEY not in envelope:
        # Plain JSON that happens to start with a byte-order mark: json.loads reads it the same way.
        return envelope
    if envelope[_ENVELOPE_VERSION_KEY] != 1:
        raise ValueError("bytes envelope of an unknown version")
    message: Any = envelope.get("message")
    places = envelope.get("bytes_at")
    if not isinstance(places, list):
        raise ValueError("bytes envelope without a bytes_at list")
    for place in places:
        if not isinstance(place, list) or not place:
            raise ValueError("bytes envelope with an empty or malformed path")
        parent: Any = message
        for step in place[:-1]:
            parent = _step_into(parent, step)
        last = place[-1]
        text = _step_into(parent, last)
        if not isinstance(text, str):
            raise ValueError("bytes envelope path does not lead to a base64 string")
        try:
            parent[last] = base64.b64decode(text, validate=True)
        except binascii.Error:
            raise ValueError("bytes envelope holds invalid base64") from None
    return message


def _step_into(container: Any, step: Any) -> Any:
    if isinstance(container, dict) and isinstance(step, str) and step in container:
        return container[step]
    if (
        isinstance(container, list)
        and isinstance(step, int)
        and not isinstance(step, bool)
        and 0 <= step < len(container)
    ):
        return container[step]
    raise ValueError("bytes envelope path leads nowhere")


def _dumps(message: Any) -> bytes:
    """``as_bytes`` without arguments: ``json.dumps(message).encode()`` minus the layers of ``json.dumps``."""
    try:
        return _ENCODER.encode(message).encode("utf-8")
    except (TypeError, ValueError, RecursionError) as exc:
        return _with_bytes(message, exc)


def _loads(data: Any) -> Any:
    """``from_bytes`` without arguments; also reads a memoryview, decoding it without copying it to bytes first."""
    if data[:3] == BYTES_ENVELOPE_MARK:
        return _open_envelope(data)
    if type(data) is memoryview:
        # What json.loads does with bytes: detect UTF-8/16/32 from the first bytes, then decode.
        data = str(data, json.detect_encoding(bytes(data[:4])), "surrogatepass")
    return json.loads(data)


class JSONSerializer(BaseMessageSerializer):
    """JSON in UTF-8, as the peers write it; bytes values travel in an envelope only this package writes."""

    _reads_buffers = True  # _loads decodes a memoryview directly

    @staticmethod
    def as_bytes(message: Any, *args: Any, **kwargs: Any) -> bytes:
        """JSON bytes of ``message``; arguments go to ``json.dumps`` (and then bytes are not carried)."""
        if not (args or kwargs):
            return _dumps(message)
        return json.dumps(message, *args, **kwargs).encode("utf-8")

    @staticmethod
    def from_bytes(message: Any, *args: Any, **kwargs: Any) -> Any:
        """The value in the JSON bytes ``message``; arguments go to ``json.loads`` (envelopes stay closed)."""
        if not (args or kwargs):
            return _loads(message)
        return json.loads(message, *args, **kwargs)

    _encode = staticmethod(_dumps)
    _decode = staticmethod(_loads)

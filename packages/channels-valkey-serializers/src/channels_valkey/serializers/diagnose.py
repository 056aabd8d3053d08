"""Find the value that stopped an encoder, so the error can name its key.

This only runs after msgpack or json has already refused a message: the fast path never pays for it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from channels_valkey.serializers.exceptions import a_type

__all__ = [
    "CHANNELS_TYPES",
    "Problem",
    "find_problem",
    "format_path",
    "json_key_problem",
    "json_value_problem",
    "msgpack_problem",
    "nesting_depth",
]

_MSGPACK_INT_MIN = -(2**63)
_MSGPACK_INT_MAX = 2**64 - 1
CHANNELS_TYPES = "bytes, str, int, float, bool, None, list or dict"

PathStep = str | int | object
Problem = tuple[tuple[PathStep, ...], str]
ScalarCheck = Callable[[object], "str | None"]


def format_path(path: tuple[PathStep, ...]) -> str:
    """``('a', 0)`` -> ``message['a'][0]``: how the error names a value."""
    return "message" + "".join(f"[{step!r}]" for step in path)


def msgpack_problem(value: object) -> str | None:
    """Why msgpack cannot write this non-container value, or ``None`` when it can."""
    if value is None or isinstance(value, (bool, float, bytes, bytearray, memoryview)):
        return None
    if isinstance(value, int):
        if _MSGPACK_INT_MIN <= value <= _MSGPACK_INT_MAX:
            return None
        return "is an int outside the range msgpack can carry (-2**63 to 2**64-1)"
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            return f"is a str that is not valid Unicode ({exc.reason} at index {exc.start})"
        return None
    return f"is {a_type(value)}, which msgpack cannot carry; messages hold {CHANNELS_TYPES}"


def json_value_problem(value: object) -> str | None:
    """Why this serializer's JSON cannot write this non-container value, or ``None`` when it can."""
    if value is None or isinstance(value, (str, int, float, bytes, bytearray, memoryview)):
        return None
    return f"is {a_type(value)}, which JSON cannot carry; messages hold {CHANNELS_TYPES}"


def json_key_problem(key: object) -> str | None:
    """Why json cannot write this dict key (it turns int, float, bool and None keys into strings)."""
    if key is None or isinstance(key, (str, int, float)):
        return None
    return f"has a key of type {type(key).__name__}; JSON object keys must be str"


def find_problem(
    message: Any, value_problem: ScalarCheck, key_problem: ScalarCheck | None = None
) -> Problem | None:
    """Walk ``message`` depth first and return the path and reason of the first value the format refuses.

    Circular references are reported too. The walk keeps its own stack, so a deeply nested message cannot
    exhaust Python's recursion limit here.
    """
    stack: list[tuple[Iterator[tuple[PathStep, Any]], tuple[PathStep, ...], bool]] = []
    ancestors: list[int] = []

    def children(container: Any) -> Iterator[tuple[PathStep, Any]]:
        if isinstance(container, dict):
            return iter(container.items())
        return iter(enumerate(container))

    def enter(value: Any, path: tuple[PathStep, ...]) -> Problem | None:
        if isinstance(value, (dict, list, tuple)):
            if id(value) in ancestors:
                return path, "contains itself (a circular reference)"
            ancestors.append(id(value))
            stack.append((children(value), path, isinstance(value, dict)))
            return None
        reason = value_problem(value)
        return None if reason is None else (path, reason)

    found = enter(message, ())
    while found is None and stack:
        items, path, is_dict = stack[-1]
        step = next(items, None)
        if step is None:
            stack.pop()
            ancestors.pop()
            continue
        key, value = step
        if is_dict and key_problem is not None:
            reason = key_problem(key)
            if reason is not None:
                return path, reason
        elif is_dict:
            reason = value_problem(key)
            if reason is not None:
                return path, f"has a key that {reason}"
        found = enter(value, (*path, key))
    return found


def nesting_depth(message: Any) -> int:
    """How many lists and dicts deep ``message`` goes (the message itself counts as one); no recursion."""
    deepest = 0
    pending: list[tuple[Any, int]] = [(message, 1)]
    while pending:
        value, depth = pending.pop()
        if isinstance(value, dict):
            value = list(value.values())
        elif not isinstance(value, (list, tuple)):
            continue
        deepest = max(deepest, depth)
        pending.extend((item, depth + 1) for item in value)
    return deepest

"""msgpack, the default format: carries every channels type (bytes included) in fewer bytes than JSON."""

from __future__ import annotations

from typing import Any

import msgpack  # type: ignore[import-untyped]

from channels_valkey.serializers.base import BaseMessageSerializer
from channels_valkey.serializers.diagnose import find_problem, format_path, msgpack_problem, nesting_depth
from channels_valkey.serializers.exceptions import MessageEncodeError

__all__ = ["MsgPackSerializer", "MsgpackSerializer"]

_Packer = msgpack.Packer


def _encode_error(message: Any, exc: Exception) -> MessageEncodeError:
    problem = find_problem(message, msgpack_problem)
    if problem is None:
        if isinstance(exc, ValueError) and "recursion" in str(exc):
            return MessageEncodeError(
                f"cannot serialize the message: it nests lists and dicts {nesting_depth(message)} deep, "
                "deeper than msgpack writes (about 1,000)"
            )
        return MessageEncodeError(f"msgpack cannot serialize the message: {type(exc).__name__}: {exc}")
    path, reason = problem
    where = format_path(path)
    return MessageEncodeError(f"cannot serialize {where}: it {reason}", where)


def _pack(message: Any) -> bytes:
    """``as_bytes`` without arguments: a fresh Packer per call, as ``msgpack.packb`` makes, minus its layers."""
    try:
        packed: bytes = _Packer().pack(message)
    except (TypeError, ValueError, OverflowError) as exc:
        raise _encode_error(message, exc) from exc
    return packed


class MsgPackSerializer(BaseMessageSerializer):
    """msgpack with the library's defaults, the bytes channels_redis 4 and channels-valkey 0.3 write and read.

    Writes ``bin`` for bytes and ``str`` for text; reads str or bytes map keys only (msgpack's
    ``strict_map_key``), as the peers do. ``from_bytes`` is ``msgpack.unpackb`` itself, as with the peers.
    """

    _reads_buffers = True  # msgpack.unpackb reads any buffer

    @staticmethod
    def as_bytes(message: Any, *args: Any, **kwargs: Any) -> bytes:
        """msgpack bytes of ``message``; arguments are ``msgpack.Packer`` options, as for ``msgpack.packb``."""
        if not (args or kwargs):
            return _pack(message)
        try:
            packed: bytes = _Packer(*args, **kwargs).pack(message)
        except (TypeError, ValueError, OverflowError) as exc:
            raise _encode_error(message, exc) from exc
        return packed

    from_bytes = staticmethod(msgpack.unpackb)
    _encode = staticmethod(_pack)
    _decode = staticmethod(msgpack.unpackb)
    _packer_type = _Packer
    _encode_error = staticmethod(_encode_error)


#: The spelling some code uses; the same class.
MsgpackSerializer = MsgPackSerializer

"""Writing on a transport that closed under its writer: the same failure on asyncio's event loop and on uvloop's.

A transport closes in an event-loop callback (the server closed or reset the connection) while its owner still
holds the writer, and a write can come before the owner has looked. asyncio's transports drop such a write (the
owner learns of the loss from ``is_closing()`` or the next read); uvloop's raise ``RuntimeError`` ("unable to
perform operation on <TCPTransport closed=True ...>; the handler is closed") from the write itself. Either way no
byte left, so the command did not run and may be written again on a new connection:

- :func:`write_command`, for the layers' own writes (the command lanes, the blocking calls), raises
  :class:`~channels_valkey.sentinel.CommandNotSent` for both.
- :func:`closed_before_write` recognizes uvloop's error where valkey-py's writes let it through (valkey-py turns
  only ``OSError`` into its ``ConnectionError``): the retries count it as a command that did not run.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from channels_valkey.sentinel.exceptions import CommandNotSent

#: How uvloop's handles end the error they raise when used after they closed.
_UVLOOP_CLOSED = "the handler is closed"


def write_command(transport: asyncio.WriteTransport, chunks: Sequence[bytes], what: str) -> None:
    """Write ``chunks`` (one or more packed commands) on ``transport`` at once, or raise ``CommandNotSent`` naming
    ``what`` (the connection's owner) when it has closed: then nothing of them was sent.

    One chunk (the usual command) is written without the join that ``writelines`` does first.
    """
    try:
        if len(chunks) == 1:
            transport.write(chunks[0])
        else:
            transport.writelines(chunks)
    except RuntimeError as error:
        if not transport.is_closing():
            raise
        raise _not_sent(what) from error
    if transport.is_closing():
        raise _not_sent(what)


def closed_before_write(error: BaseException) -> bool:
    """Whether ``error`` is uvloop refusing a write on a transport that had closed (nothing was sent)."""
    return isinstance(error, RuntimeError) and str(error).endswith(_UVLOOP_CLOSED)


def _not_sent(what: str) -> CommandNotSent:
    return CommandNotSent(f"{what}'s connection was reset before the command reached the server")

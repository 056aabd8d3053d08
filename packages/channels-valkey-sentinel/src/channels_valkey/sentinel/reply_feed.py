"""Replies parsed where their bytes arrive, for a connection that one owner reads all the time.

valkey-py reads a reply in three event-loop steps: the transport's callback fills a ``StreamReader`` and wakes the
task waiting on it, that task parses the reply and wakes whoever wanted it, and that one runs. A connection read
all the time by one owner (the command lane, a Pub/Sub listener) needs no reading task: :func:`feed_replies` puts a
small protocol in front of the connection's transport that hands the bytes to the connection's own libvalkey
reader (the one valkey-py made at connect, with its mapping of error replies to valkey-py's exception classes) and
each reply to the owner at once, from the transport's callback. That is one step fewer per reply.

Connecting, ``AUTH``, ``HELLO`` and TLS stay valkey-py's; the feed starts on a connected connection. The stream
protocol it replaces still gets what writing and closing need (``pause_writing``, ``resume_writing``,
``connection_lost``), so valkey-py's ``drain()``, ``disconnect()`` and ``wait_closed()`` keep working.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from valkey import exceptions as valkey_errors
from valkey._parsers.libvalkey import NOT_ENOUGH_DATA, _AsyncLibvalkeyParser
from valkey._parsers.socket import SERVER_CLOSED_CONNECTION_ERROR
from valkey.asyncio.connection import AbstractConnection


def feed_replies(
    connection: AbstractConnection,
    on_reply: Callable[[Any], object],
    on_lost: Callable[[BaseException], object],
) -> bool:
    """Hand each reply of ``connection`` to ``on_reply`` as it arrives; ``False`` (nothing done) when the
    connection's parser is not libvalkey's, and its owner reads with :func:`~channels_valkey.sentinel.read_reply`.

    ``on_reply`` gets replies as ``read_reply`` returns them: an error reply as its ``ResponseError``. ``on_lost``
    is called once, with a ``ConnectionError`` when the connection closes or fails (the server closed it, an error
    reply valkey-py maps to ``ConnectionError``, a protocol error), or with what ``on_reply`` raised; the transport
    is closed by then or being closed, and nothing more is delivered. The owner still disconnects the connection and
    gives it back to its pool.
    """
    parser: Any = connection._parser
    writer = connection._writer
    if not isinstance(parser, _AsyncLibvalkeyParser) or parser._reader is None or writer is None:
        return False
    transport = writer.transport
    feed = _Feed(transport, transport.get_protocol(), parser._reader, on_reply, on_lost)
    transport.set_protocol(feed)
    # Bytes the stream took in after valkey-py's last read (none unless the server spoke unasked) come first.
    buffered = getattr(connection._reader, "_buffer", None)
    if buffered:
        data = bytes(buffered)
        buffered.clear()
        feed.data_received(data)
    else:
        feed.data_received(b"")
    return True


class _Feed(asyncio.Protocol):
    """The transport's protocol once the feed starts: parse and deliver in ``data_received``."""

    def __init__(
        self,
        transport: asyncio.WriteTransport,
        stream: asyncio.BaseProtocol,
        reader: Any,
        on_reply: Callable[[Any], object],
        on_lost: Callable[[BaseException], object],
    ) -> None:
        self._transport = transport
        self._stream = stream
        self._reader = reader
        self._on_reply = on_reply
        self._on_lost = on_lost
        self._ended = False

    def data_received(self, data: bytes) -> None:
        if self._ended:
            return
        reader = self._reader
        on_reply = self._on_reply
        try:
            if data:
                reader.feed(data)
            while True:
                reply = reader.gets()
                if reply is NOT_ENOUGH_DATA:
                    return
                # As valkey-py's read_response: a reply it maps to ConnectionError ends the connection.
                if isinstance(reply, valkey_errors.ConnectionError):
                    raise reply
                if isinstance(reply, list) and reply and isinstance(reply[0], valkey_errors.ConnectionError):
                    raise reply[0]
                on_reply(reply)
                if self._ended:  # on_reply ended the connection
                    return
        except Exception as error:
            self._end(error)
            self._transport.abort()

    def eof_received(self) -> bool:
        return False  # the transport closes and connection_lost reports it

    def connection_lost(self, exc: Exception | None) -> None:
        self._stream.connection_lost(exc)  # wakes drain() and wait_closed()
        if exc is None:
            self._end(valkey_errors.ConnectionError(SERVER_CLOSED_CONNECTION_ERROR))
        else:
            self._end(valkey_errors.ConnectionError(f"error while reading: {exc!r}"))

    def pause_writing(self) -> None:
        self._stream.pause_writing()

    def resume_writing(self) -> None:
        self._stream.resume_writing()

    def _end(self, error: BaseException) -> None:
        if not self._ended:
            self._ended = True
            self._on_lost(error)

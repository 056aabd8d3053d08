"""Closing what an object keeps on an event loop when that loop closes.

Connections and tasks belong to the loop that made them, and ``async_to_sync`` and ``asyncio.run`` close their loop
as soon as the call returns: whatever is still open then is reported as unclosed, and server-side clients leak. No
asyncio event says a loop is about to close, so the connection manager and the Pub/Sub layer put a hook on
``loop.close`` that closes their part first, both through :func:`close_before_loop`.
"""

from __future__ import annotations

import asyncio
import logging
import types
import weakref
from collections.abc import Awaitable, Callable
from typing import TypeVar

logger = logging.getLogger("channels_valkey.sentinel")

_Owner = TypeVar("_Owner")


def close_before_loop(
    loop: asyncio.AbstractEventLoop, owner: _Owner, close: Callable[[_Owner], Awaitable[object]]
) -> None:
    """Make ``loop.close()`` first run ``close(owner)`` to completion on ``loop``, then close the loop.

    ``close`` finds what ``owner`` keeps on the loop with ``asyncio.get_running_loop()``, as it would when awaited
    by hand. ``owner`` is held by weak reference, so the hook never keeps it alive and does nothing once it is
    gone; it also does nothing on a loop that is already closed or still running. An error of ``close`` is logged
    and the loop closes anyway. Hooks stack: the one put last runs first, so an object that uses another's
    connections puts its hook after it. uvloop's loop takes the hook as asyncio's does (the tests run on both); a
    loop that refuses the attribute does not, and then ``owner`` must be closed before its loop by hand.
    """
    original = loop.close
    owner_ref = weakref.ref(owner)

    def close_owner_then_loop(closing: asyncio.AbstractEventLoop) -> None:
        closing.close = original  # type: ignore[method-assign]
        alive = owner_ref()
        if alive is not None and not closing.is_closed() and not closing.is_running():
            try:
                closing.run_until_complete(close(alive))
            except Exception:
                logger.exception("closing %s on its event loop, which is closing, failed", alive)
        original()

    try:
        loop.close = types.MethodType(close_owner_then_loop, loop)  # type: ignore[method-assign]
    except AttributeError:
        logger.debug("event loop %r does not allow a close hook; close %s before closing it", loop, owner)

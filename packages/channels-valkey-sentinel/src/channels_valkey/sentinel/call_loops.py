"""Which sends the layers hand from a loop that asgiref's ``async_to_sync`` made for a single call to their own loop.

``async_to_sync(layer.group_send)(...)`` from a thread with no event loop (a Django view under WSGI, a Celery task)
makes a new thread and event loop for the call and closes both when it returns. A send run on such a loop first
takes sockets parked by the previous call's loop and parks them again as the loop closes: about 200 us of the
layer's own work per call, more than the send itself. The layers hand sends made there to their long-lived loop
(``layer.sync``'s), whose connections are already open, and await the result: a thread hop instead of a loop's
connections.

asgiref keeps each loop it made for one call in ``AsyncToSync.loop_thread_executors`` while the call runs (to run
``sync_to_async`` code back in the calling thread). That is not public API: where it is missing (another asgiref,
or none installed), nothing is handed off and every send runs on the loop it was made on, with parked sockets.

A loop ``async_to_sync`` made can also run a whole program (``async_to_sync(main)()``). Such a loop hands off its
first :data:`HAND_OFF_LIMIT` sends only, then opens its own connections as any other loop does: a program that
keeps sending is not slowed by a hop per send.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Container
from typing import Any

__all__ = ["HAND_OFF_LIMIT", "hands_off", "on_call_loop"]

#: Sends a loop made for one call hands to the layer's loop before it counts as long-lived. A view or a task sends a
#: few messages per ``async_to_sync`` call.
HAND_OFF_LIMIT = 16


def _call_loops() -> Container[Any]:
    try:
        from asgiref.sync import AsyncToSync
    except ImportError:
        return ()
    loops = getattr(AsyncToSync, "loop_thread_executors", None)
    return loops if isinstance(loops, dict) else ()


#: The loops asgiref made for one call each, by the loop (asgiref's own dict, read as it changes).
_CALL_LOOPS = _call_loops()
#: How many sends each such loop handed off so far.
_handed: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, int] = weakref.WeakKeyDictionary()


def on_call_loop() -> bool:
    """True when the running loop was made by ``async_to_sync`` for the call that runs on it."""
    return asyncio.get_running_loop() in _CALL_LOOPS


def hands_off() -> bool:
    """True when a send made now goes to the layer's own loop: the running loop is one ``async_to_sync`` made for
    one call and has handed off fewer than :data:`HAND_OFF_LIMIT` sends (this one is counted)."""
    loop = asyncio.get_running_loop()
    if loop not in _CALL_LOOPS:
        return False
    handed = _handed.get(loop, 0)
    if handed >= HAND_OFF_LIMIT:
        return False
    _handed[loop] = handed + 1
    return True

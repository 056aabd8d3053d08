"""Follows the Sentinels' failover announcements for one service, so no connection stays on a demoted primary.

valkey-py re-asks the Sentinels only when it opens a connection; after a graceful ``SENTINEL FAILOVER`` the old
primary keeps accepting writes for about ten seconds, and whatever is written there is lost when it resyncs as a
replica. Even ``+switch-master`` comes about a second after the chosen replica stopped replicating. So the watcher
acts on ``+selected-slave``, the moment the Sentinels pick the replica to promote: the shard moves its connections
there at once (writes are refused with ``READONLY``, and retried, until the promotion lands) and
``+switch-master`` then confirms or corrects the address.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Awaitable, Callable

import valkey.asyncio as avalkey
from valkey import exceptions as valkey_errors

from channels_valkey.sentinel.policy import ResiliencePolicy
from channels_valkey.sentinel.retry import Retries
from channels_valkey.sentinel.specs import SentinelHost
from channels_valkey.sentinel.tasks import BackgroundTask, raise_if_cancelling

logger = logging.getLogger("channels_valkey.sentinel")

SWITCH_CHANNEL = "+switch-master"
SELECTED_CHANNEL = "+selected-slave"
Address = tuple[str, int]


class SwitchWatcher:
    """A task on the current event loop (the follower's thread, see follower.py) that listens to one Sentinel at a
    time and reports failovers.

    ``on_promoting(address)`` is called when the Sentinels select the replica at ``address`` for promotion,
    ``on_switch(address)`` when they announce (or a reconnected watcher finds) a new primary at ``address``.
    """

    def __init__(
        self,
        spec: SentinelHost,
        policy: ResiliencePolicy,
        on_promoting: Callable[[Address], Awaitable[None]],
        on_switch: Callable[[Address], Awaitable[None]],
    ) -> None:
        self.spec = spec
        self.policy = policy
        self.on_promoting = on_promoting
        self.on_switch = on_switch
        self.known_primary: Address | None = None
        #: Set each time the watcher is subscribed on a Sentinel (tests wait on it).
        self.listening = asyncio.Event()
        self._task: BackgroundTask | None = None

    def start(self) -> None:
        # A BackgroundTask, since it runs on every loop that uses the shard: a loop that asyncio.run closes (each
        # async_to_sync call) cancels it once, valkey-py can lose that cancellation, and a plain task would then
        # keep the loop, and the call that made it, from ever ending.
        self._task = BackgroundTask(self._run(), f"channels-valkey switch watcher {self.spec.service_name}")

    async def stop(self) -> None:
        """Cancel the task and wait until it has really ended."""
        task, self._task = self._task, None
        if task is None:
            return
        await task.stop()
        if not task.work.cancelled() and task.work.exception() is not None:
            logger.error("switch watcher ended with an error", exc_info=task.work.exception())

    async def _run(self) -> None:
        retries = Retries(
            self.policy, f"switch watcher of {self.spec.service_name}", logger=logger, bounded=False
        )
        for host, port in itertools.cycle(self.spec.sentinels):
            try:
                await self._listen(host, port, retries)
            except (valkey_errors.ConnectionError, valkey_errors.TimeoutError, OSError) as exc:
                raise_if_cancelling()  # a cancellation valkey-py turned into a connection error
                self.listening.clear()
                retries.failed()
                await retries.wait(exc, level=logging.DEBUG)  # the next Sentinel in the list is tried

    async def _listen(self, host: str, port: int, retries: Retries) -> None:
        options = {
            "socket_connect_timeout": self.policy.connect_timeout,
            "socket_timeout": self.policy.socket_timeout,
            "socket_keepalive": self.policy.keepalive,
            **self.spec.sentinel_options,
        }
        client = avalkey.Valkey(host=host, port=port, **options)
        try:
            async with client.pubsub() as pubsub:
                # Each valkey-py await may lose the cancellation of a closing loop (asyncio.wait_for before Python
                # 3.12): the watcher checks after each, so that the loop's close does not wait for a second one.
                await pubsub.subscribe(SELECTED_CHANNEL, SWITCH_CHANNEL)
                raise_if_cancelling()
                # A switch may have happened while no Sentinel was being listened to.
                primary = await self._primary_now(client)
                raise_if_cancelling()
                await self._report(primary)
                self.listening.set()
                retries.succeeded()
                while True:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                    raise_if_cancelling()
                    if message is None:
                        await pubsub.ping()  # notices a Sentinel that vanished without closing the socket
                        raise_if_cancelling()
                    elif message["type"] == "message":
                        await self._dispatch(message["channel"], message["data"])
        finally:
            await client.aclose()

    async def _primary_now(self, client: avalkey.Valkey) -> Address | None:
        reply = await client.sentinel_get_master_addr_by_name(self.spec.service_name)
        if not reply:
            return None
        host, port = reply
        return (host.decode() if isinstance(host, bytes) else str(host), int(port))

    async def _dispatch(self, channel: bytes | str, data: bytes | str) -> None:
        name = channel.decode() if isinstance(channel, bytes) else channel
        parts = (data.decode() if isinstance(data, bytes) else data).split()
        # +switch-master: "<service> <old ip> <old port> <new ip> <new port>"
        if name == SWITCH_CHANNEL and len(parts) == 5 and parts[0] == self.spec.service_name:
            await self._report((parts[3], int(parts[4])))
        # +selected-slave: "slave <ip>:<port> <ip> <port> @ <service> <primary ip> <primary port>"
        elif name == SELECTED_CHANNEL and len(parts) == 8 and parts[5] == self.spec.service_name:
            await self._call(self.on_promoting, (parts[2], int(parts[3])))

    async def _report(self, address: Address | None) -> None:
        if address is None or address == self.known_primary:
            return
        previous, self.known_primary = self.known_primary, address
        if previous is not None:
            await self._call(self.on_switch, address)

    async def _call(self, callback: Callable[[Address], Awaitable[None]], address: Address) -> None:
        try:
            await callback(address)
        except Exception:
            logger.exception("switch watcher: moving %s to %s:%s failed", self.spec.service_name, *address)

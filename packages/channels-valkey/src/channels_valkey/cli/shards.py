"""The shards a command talks to: the target's host specs resolved (Sentinel discovery included, and a Valkey
Cluster expanded to one shard per primary), each with its own connections, built as the layers build theirs and
closed when the command is done."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

import valkey.asyncio as avalkey
from valkey import exceptions as valkey_errors

from channels_valkey.sentinel import (
    ClusterHost,
    ConnectionManager,
    HostSpec,
    ResiliencePolicy,
    SentinelDiscovery,
    SentinelHost,
    ServerHost,
    discover_services,
)


@dataclass
class ShardSlot:
    """One shard: where it is, and either its connections or why there are none."""

    index: int
    host: str
    spec: ServerHost | SentinelHost | None
    #: Why there are no connections, as a finding words it ("unreachable: ...").
    problem: str | None = None
    manager: ConnectionManager | None = None
    #: The cluster entry this shard is a primary of (or failed to be found in); None outside a cluster.
    cluster: ClusterHost | None = None
    #: True when ``problem`` is a login the server refused.
    login_refused: bool = False

    @property
    def service(self) -> str | None:
        """The Sentinel service name of a Sentinel-managed shard."""
        return self.spec.service_name if isinstance(self.spec, SentinelHost) else None

    async def client(self) -> avalkey.Valkey:
        """The shard's command client on this event loop (commands on it are not retried)."""
        if self.manager is None:
            raise RuntimeError(f"shard {self.index} has no connection: {self.problem}")
        return await self.manager.client(0)


def primary_address(client: avalkey.Valkey) -> str | None:
    """``host:port`` the Sentinels named for a Sentinel-managed client, once it has connected."""
    address = getattr(client.connection_pool, "master_address", None)
    if not address:
        return None
    host, port = address
    return f"{host}:{port}"


@contextlib.asynccontextmanager
async def open_shards(specs: Sequence[HostSpec], policy: ResiliencePolicy) -> AsyncIterator[list[ShardSlot]]:
    """The shards of ``specs`` in ring order, connected lazily; every connection is closed on the way out.

    An entry naming every primary of some Sentinels (``services: []``) is asked for its primaries first; when no
    Sentinel answers, it stands as one shard that carries the reason.
    """
    slots: list[ShardSlot] = []
    try:
        for spec in specs:
            resolved: list[ServerHost | SentinelHost]
            if isinstance(spec, SentinelDiscovery):
                try:
                    resolved = list(await discover_services(spec, timeout=policy.connect_timeout))
                except (valkey_errors.ValkeyError, OSError) as error:
                    slots.append(
                        ShardSlot(len(slots), spec.describe(), None, problem=f"unreachable: {error}")
                    )
                    continue
            elif isinstance(spec, ClusterHost):
                try:
                    resolved = await _cluster_primaries(spec, policy)
                except (valkey_errors.ValkeyError, OSError) as error:
                    slots.append(_unresolved_cluster(len(slots), spec, error))
                    continue
            else:
                resolved = [spec]
            cluster = spec if isinstance(spec, ClusterHost) else None
            for one in resolved:
                manager = ConnectionManager([one], policy)
                slots.append(ShardSlot(len(slots), one.describe(), one, manager=manager, cluster=cluster))
        yield slots
    finally:
        for slot in slots:
            if slot.manager is not None:
                await slot.manager.close()


async def _cluster_primaries(spec: ClusterHost, policy: ResiliencePolicy) -> list[ServerHost | SentinelHost]:
    """The primaries of a cluster (from its slot map), each to be checked and inspected as one shard."""
    manager = ConnectionManager([spec], policy)
    try:
        return [node.spec for node in await manager.primaries(0)]
    finally:
        await manager.close()


def _unresolved_cluster(index: int, spec: ClusterHost, error: BaseException) -> ShardSlot:
    """The one shard standing for a cluster whose primaries could not be found, with the reason in words."""
    slot = ShardSlot(index, spec.describe(), None, cluster=spec)
    if isinstance(error, valkey_errors.AuthenticationError):
        slot.problem, slot.login_refused = f"the server refused the login: {error}", True
    elif isinstance(error, valkey_errors.NoPermissionError):
        slot.problem = (
            f"the ACL refuses CLUSTER SLOTS, which the layers need to find the cluster's nodes: {error}"
        )
    elif "cluster support disabled" in str(error):
        slot.problem = (
            f"not a cluster: {error}; a server that is not in cluster mode is a plain hosts entry "
            "(a URL), not a cluster entry"
        )
    else:
        slot.problem = f"unreachable: {error}"
    return slot

"""The server set-ups tests ask for: shards, a password and ACL users, a unix socket, Sentinel-managed primaries.

Each is built from :class:`~servers.process.ValkeyProcess` and stops every process it started.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import valkey

from servers.process import ConfigValue, ServerError, ValkeyProcess, wait_until

#: Password of the ``default`` user on the secured server.
SERVER_PASSWORD = "server-secret"
#: Password Sentinels require from clients and from each other.
SENTINEL_PASSWORD = "sentinel-secret"
#: Name under which the Sentinels monitor the primary.
SERVICE_NAME = "mymaster"
#: Name of the second primary :class:`SentinelServices` adds (it sorts after :data:`SERVICE_NAME`).
SECOND_SERVICE_NAME = "second"
#: Sentinel timings for tests (the binary's defaults are 30 s / 180 s).
DOWN_AFTER_MS = 1000
FAILOVER_TIMEOUT_MS = 3000


def start_standalone(workdir: Path, name: str, **config: Any) -> ValkeyProcess:
    """One plain server; ``config`` keys use underscores for dashes (``maxmemory_policy="allkeys-lru"``)."""
    password = config.pop("password", None)
    settings = {key.replace("_", "-"): value for key, value in config.items()}
    return ValkeyProcess(workdir, name, settings, password=password).start()


class Shards:
    """Several independent servers, as a sharded ``hosts`` list uses them."""

    def __init__(self, workdir: Path, count: int = 3) -> None:
        self.servers = [ValkeyProcess(workdir, f"shard{index}") for index in range(count)]

    def start(self) -> Shards:
        for server in self.servers:
            server.start()
        return self

    def stop(self) -> None:
        for server in self.servers:
            server.stop()

    def urls(self) -> list[str]:
        return [server.url() for server in self.servers]

    def __iter__(self) -> Iterator[ValkeyProcess]:
        return iter(self.servers)

    def __len__(self) -> int:
        return len(self.servers)


def add_acl_user(server: ValkeyProcess, username: str, password: str, rules: Sequence[str]) -> None:
    """Create (or replace) an ACL user with ``rules`` such as ``["~*", "&*", "+@all"]`` or ``["+zadd", ...]``."""
    with server.client() as client:
        # resetchannels: Redis 6.2's reset allows every channel (acl-pubsub-default), later releases' none.
        client.execute_command(
            "ACL", "SETUSER", username, "reset", "resetchannels", "on", f">{password}", *rules
        )


class SentinelGroup:
    """A primary, one replica and three Sentinels with a password, ready to fail over in about two seconds.

    The data nodes have no password; the Sentinels require :data:`SENTINEL_PASSWORD` from clients
    (``sentinel_kwargs={"password": ...}``) and use it among themselves.
    """

    #: How clients reach the group, as test ids and figures name it (``tls`` for the TLS group).
    transport = "plain"

    def __init__(self, workdir: Path, *, sentinels: int = 3, service_name: str = SERVICE_NAME) -> None:
        self.workdir = workdir
        self.service_name = service_name
        # No delay before a full sync: replicas are in sync within a second of starting.
        node_config: dict[str, ConfigValue] = {
            "repl-diskless-sync-delay": 0,
            "replica-announce-ip": "127.0.0.1",
        }
        self.primary = ValkeyProcess(workdir, "node0", node_config)
        self.replica = ValkeyProcess(
            workdir, "node1", {**node_config, "replicaof": f"{self.primary.host} {self.primary.port}"}
        )
        self.nodes = [self.primary, self.replica]
        self.sentinels = [
            ValkeyProcess(
                workdir,
                f"sentinel{index}",
                {
                    "sentinel": sentinel_directives(service_name, self.primary.address),
                    "requirepass": SENTINEL_PASSWORD,
                },
                sentinel=True,
                password=SENTINEL_PASSWORD,
            )
            for index in range(sentinels)
        ]

    # Life cycle ----------------------------------------------------------------------------------------------

    def start(self, timeout: float = 20.0) -> SentinelGroup:
        with ExitStack() as undo:
            for process in [*self.nodes, *self.sentinels]:
                process.start()
                undo.callback(process.stop)
            self.wait_ready(timeout)
            undo.pop_all()
        return self

    def stop(self) -> None:
        for process in [*self.sentinels, *self.nodes]:
            process.stop()

    def wait_ready(self, timeout: float = 20.0) -> None:
        """Wait until every Sentinel knows the primary, a replica in sync, and the other Sentinels (quorum)."""
        wanted_sentinels = len(self.sentinels) - 1

        def ready() -> bool:
            _, primary_port = self.address_of(self.current_primary())
            for sentinel in self.sentinels:
                with sentinel.client() as client:
                    state = client.sentinel_master(self.service_name)
                    replicas = client.sentinel_slaves(self.service_name)
                if state["port"] != primary_port or not state["is_master"] or state["is_sdown"]:
                    return False
                if state["num-other-sentinels"] < wanted_sentinels:
                    return False
                if not any(_replica_usable(replica) for replica in replicas):
                    return False
            return True

        try:
            wait_until(ready, timeout=timeout, message="the Sentinel group to be ready")
        except TimeoutError as exc:
            logs = ", ".join(str(process.log_file) for process in [*self.nodes, *self.sentinels])
            raise ServerError(f"Sentinel group did not become ready in {timeout:.0f}s; logs: {logs}") from exc

    # What clients need ------------------------------------------------------------------------------------------

    @property
    def sentinel_addresses(self) -> list[tuple[str, int]]:
        return [sentinel.address for sentinel in self.sentinels]

    @property
    def sentinel_kwargs(self) -> dict[str, Any]:
        return {"password": SENTINEL_PASSWORD}

    def host_entry(self, **client_options: Any) -> dict[str, Any]:
        """A ``hosts`` entry in the Sentinel dict form the layers accept."""
        return {
            "sentinels": self.sentinel_addresses,
            "master_name": self.service_name,
            "sentinel_kwargs": self.sentinel_kwargs,
            **client_options,
        }

    def check_transport(self, *nodes: ValkeyProcess) -> str:
        """Check that clients reached ``nodes`` the way this group is meant to be reached, and say how for a test's
        figures; in plaintext there is nothing to check (the TLS group counts handshakes)."""
        return "plaintext"

    # State and faults -------------------------------------------------------------------------------------------

    def address_of(self, node: ValkeyProcess) -> tuple[str, int]:
        """Where the Sentinels, the other node and clients reach ``node``, and so what the Sentinels report: its own
        port here (a TLS group puts a proxy in front)."""
        return node.address

    def primary_address(self) -> tuple[str, int]:
        """Where the Sentinels say the primary is, asking each running Sentinel until one answers."""
        last_error: Exception | None = None
        for sentinel in self.sentinels:
            if not sentinel.is_running():
                continue
            try:
                with sentinel.client(socket_timeout=1) as client:
                    host, port = client.sentinel_get_master_addr_by_name(self.service_name)
                    return (str(host.decode() if isinstance(host, bytes) else host), int(port))
            except valkey.ValkeyError as exc:
                last_error = exc
        raise ServerError(f"no Sentinel answered for {self.service_name!r}") from last_error

    def current_primary(self) -> ValkeyProcess:
        address = self.primary_address()
        for node in self.nodes:
            if self.address_of(node) == address:
                return node
        raise ServerError(f"Sentinels name {address} as primary, which is none of {self.nodes}")

    def kill_node(self, node: ValkeyProcess) -> None:
        """``kill -9`` ``node`` (bring it back with :meth:`rejoin` or :meth:`start_node`)."""
        node.kill()

    def start_node(self, node: ValkeyProcess) -> None:
        """Start a killed node again on its port, as it is configured now."""
        node.start()

    def kill_primary(self) -> ValkeyProcess:
        """``kill -9`` the current primary and return it (bring it back with :meth:`rejoin`)."""
        primary = self.current_primary()
        self.kill_node(primary)
        return primary

    def wait_for_new_primary(self, old: ValkeyProcess, timeout: float = 15.0) -> ValkeyProcess:
        """Wait until the Sentinels have promoted another node than ``old`` and it accepts writes."""

        def promoted() -> ValkeyProcess | None:
            node = self.current_primary()
            if node is old:
                return None
            with node.client(socket_timeout=1) as client:
                return node if client.info("replication")["role"] == "master" else None

        result: ValkeyProcess = wait_until(
            promoted,
            timeout=timeout,
            message=f"a primary other than {old.name}",
            retry_on=(valkey.ValkeyError, OSError, ServerError),
        )
        return result

    def rejoin(self, node: ValkeyProcess, timeout: float = 20.0) -> None:
        """Start a node that was killed as a replica of the current primary, as an operator would, and wait ready.

        Left to itself, a restarted old primary is demoted by the Sentinels only at their next periodic check
        (about ten seconds); telling it where the primary is makes the group whole again at once.
        """
        host, port = self.address_of(self.current_primary())
        node.set_config("replicaof", f"{host} {port}")
        self.start_node(node)
        self.wait_ready(timeout)

    def monitor(self, name: str, server: ValkeyProcess) -> None:
        """Make every Sentinel monitor ``server`` as the primary ``name`` too, and wait until each lists it.

        With two names monitored, a ``services: []`` entry discovers two shards.
        """
        for sentinel in self.sentinels:
            with sentinel.client() as client:
                client.execute_command("SENTINEL", "MONITOR", name, server.host, server.port, 2)

        def listed() -> bool:
            for sentinel in self.sentinels:
                with sentinel.client() as client:
                    if name not in client.sentinel_masters():
                        return False
            return True

        wait_until(listed, timeout=10, message=f"every Sentinel to monitor {name!r}")

    def failover(self) -> None:
        """A graceful ``SENTINEL FAILOVER``, as an operator does it for maintenance."""
        with self.sentinels[0].client() as client:
            client.execute_command("SENTINEL", "FAILOVER", self.service_name)


def sentinel_directives(service_name: str, primary: tuple[str, int]) -> list[str]:
    """The ``sentinel`` lines of a test Sentinel: monitor ``primary`` as ``service_name``, fail over in seconds."""
    host, port = primary
    return [
        f"monitor {service_name} {host} {port} 2",
        f"down-after-milliseconds {service_name} {DOWN_AFTER_MS}",
        f"failover-timeout {service_name} {FAILOVER_TIMEOUT_MS}",
        f"parallel-syncs {service_name} 1",
        f"sentinel-pass {SENTINEL_PASSWORD}",
        "resolve-hostnames no",
    ]


def _replica_usable(replica: dict[str, Any]) -> bool:
    """Whether a Sentinel would promote this replica: reachable, linked to the primary, not flagged down."""
    return bool(
        replica["is_slave"]
        and not (replica["is_sdown"] or replica["is_odown"] or replica["is_disconnected"])
        and replica.get("master-link-status") == "ok"
    )


class SentinelServices:
    """Sentinels monitoring two primaries: the group's own, and a plain server added as ``second``.

    What a ``{"sentinels": [...], "services": []}`` entry is for: the Sentinels name the shards, sorted by name.
    """

    def __init__(self, group: SentinelGroup, second: ValkeyProcess) -> None:
        self.group = group
        self.second = second
        group.monitor(SECOND_SERVICE_NAME, second)

    @property
    def names(self) -> list[str]:
        """The monitored primaries' names in ring order (sorted, as discovery sorts them)."""
        return sorted([self.group.service_name, SECOND_SERVICE_NAME])

    def primaries(self) -> list[ValkeyProcess]:
        """The primaries in ring order: shard ``i`` is ``primaries()[i]``."""
        by_name = {self.group.service_name: self.group.current_primary(), SECOND_SERVICE_NAME: self.second}
        return [by_name[name] for name in self.names]

    def entry(self, services: list[str]) -> dict[str, Any]:
        """A ``hosts`` entry naming ``services`` (``[]``: ask the Sentinels)."""
        return {
            "sentinels": self.group.sentinel_addresses,
            "services": services,
            "sentinel_kwargs": self.group.sentinel_kwargs,
        }

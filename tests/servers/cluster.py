"""A real Valkey Cluster for tests: primaries with replicas, created by ``valkey-cli --cluster create``.

Nodes are ordinary :class:`~servers.process.ValkeyProcess` servers in cluster mode, each with its own
``nodes.conf`` in its folder, so a node killed with ``kill -9`` restarts on its port with its identity and rejoins.
Roles are never remembered here: after a failover the cluster's own ``CLUSTER NODES`` is the only truth, so every
question about who is primary is asked again.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import valkey

from servers.certificates import CertificateFiles
from servers.process import ConfigValue, ServerError, ValkeyProcess, cli_binary, wait_until
from servers.tls_proxy import TLSProxy

#: Number of hash slots a Valkey Cluster divides keys into.
SLOTS = 16384
#: Seconds ``valkey-cli --cluster create`` may take before the cluster is declared broken.
CREATE_TIMEOUT = 60.0
#: ``cluster-node-timeout`` of the test clusters. Writes must resume within this plus 3 s of a kill -9; the failover
#: itself takes up to 1.5 times this plus up to 1 s of election, so a shorter timeout leaves more of the 3 s to the
#: clients (measured: 2.2 to 2.7 s at 1000 ms, 3.5 to 4.3 s at 2000 ms, before CI load). Nodes are idle enough that
#: one second of silence still means a dead node.
DEFAULT_NODE_TIMEOUT_MS = 1000


@dataclass(frozen=True)
class NodeView:
    """One line of ``CLUSTER NODES``: what the asked node believes about one member."""

    node_id: str
    address: tuple[str, int]
    flags: frozenset[str]
    primary_id: str | None
    slots: frozenset[int]

    @property
    def is_primary(self) -> bool:
        return "master" in self.flags

    @property
    def is_failed(self) -> bool:
        return bool(self.flags & {"fail", "fail?", "noaddr", "handshake"})


def parse_cluster_nodes(text: str) -> list[NodeView]:
    """Parse a ``CLUSTER NODES`` reply; slots being migrated (``[slot->-id]``) are not counted as owned."""
    views: list[NodeView] = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 8:
            continue
        host, _, port = fields[1].split("@")[0].rpartition(":")
        slots: set[int] = set()
        for item in fields[8:]:
            if item.startswith("["):
                continue
            first, _, last = item.partition("-")
            slots.update(range(int(first), int(last or first) + 1))
        views.append(
            NodeView(
                node_id=fields[0],
                address=(host, int(port)),
                flags=frozenset(fields[2].split(",")),
                primary_id=None if fields[3] == "-" else fields[3],
                slots=frozenset(slots),
            )
        )
    return views


class ValkeyCluster:
    """``primaries`` primaries with ``replicas_per_primary`` replicas each; a killed primary fails over in seconds.

    ``node_timeout_ms`` is ``cluster-node-timeout``: how long a silent node stays unsuspected (the binary's default
    is 15 s). A failover takes up to one and a half times this, plus the replica's election delay of 0.5 to 1 s.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        primaries: int = 3,
        replicas_per_primary: int = 1,
        node_timeout_ms: int = DEFAULT_NODE_TIMEOUT_MS,
        password: str | None = None,
    ) -> None:
        if primaries < 3:
            raise ValueError(f"a Valkey Cluster needs at least 3 primaries, got primaries={primaries}")
        if replicas_per_primary < 0:
            raise ValueError(f"replicas_per_primary must be 0 or more, got {replicas_per_primary}")
        self.workdir = workdir
        self.primary_count = primaries
        self.replicas_per_primary = replicas_per_primary
        self.node_timeout_ms = node_timeout_ms
        self.password = password
        node_config: dict[str, ConfigValue] = {
            "cluster-enabled": "yes",
            "cluster-config-file": "nodes.conf",
            "cluster-node-timeout": node_timeout_ms,
            # A replica may take over however long it was cut off: tests kill primaries right after creation.
            "cluster-replica-validity-factor": 0,
            "repl-diskless-sync-delay": 0,
            "appendonly": "no",
        }
        if password is not None:
            node_config["masterauth"] = password  # replicas authenticate to their primary
        count = primaries * (1 + replicas_per_primary)
        self.nodes = [
            ValkeyProcess(workdir, f"node{index}", node_config, password=password) for index in range(count)
        ]

    # Life cycle ----------------------------------------------------------------------------------------------

    def start(self, timeout: float = 30.0) -> ValkeyCluster:
        """Start every node, join them with ``valkey-cli --cluster create`` and wait until the cluster is ok."""
        with ExitStack() as undo:
            for node in self.nodes:
                node.start()
                undo.callback(node.stop)
            self._create()
            self.wait_ready(timeout)
            undo.pop_all()
        return self

    def _create(self) -> None:
        command = [str(cli_binary()), "--cluster", "create"]
        command += [f"{node.host}:{node.port}" for node in self.nodes]
        command += ["--cluster-replicas", str(self.replicas_per_primary), "--cluster-yes"]
        if self.password is not None:
            command += ["-a", self.password, "--no-auth-warning"]
        try:
            result = subprocess.run(
                command,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=CREATE_TIMEOUT,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise ServerError(
                f"`valkey-cli --cluster create` hung for {CREATE_TIMEOUT:.0f}s; {self._logs()}"
            ) from exc
        if result.returncode != 0:
            output = (result.stdout + result.stderr).strip().splitlines()[-15:]
            raise ServerError(
                f"`valkey-cli --cluster create` exited with {result.returncode}; {self._logs()}\n  | "
                + "\n  | ".join(output)
            )

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Wait until every node runs, says ``cluster_state:ok`` with all slots served, roles are complete (each
        primary has its replicas) and every replica's link to its primary is up."""
        for node in self.nodes:
            node.ensure_running()

        def ready() -> bool:
            for node in self.nodes:
                if not _cluster_ok(node, known_nodes=len(self.nodes)):
                    return False
            views = self._views()
            if any(view.is_failed for view in views) or _owned_slots(views) != SLOTS:
                return False
            if len(self.primaries()) != self.primary_count:
                return False
            replicas = self.replicas()
            if len(replicas) != self.primary_count * self.replicas_per_primary:
                return False
            return all(_replica_linked(replica) for replica in replicas)

        try:
            wait_until(ready, timeout=timeout, message="the cluster to be ok")
        except TimeoutError as exc:
            raise ServerError(f"cluster did not become ok in {timeout:.0f}s; {self._logs()}") from exc

    def ensure(self, timeout: float = 10.0) -> None:
        """Raise :class:`ServerError` naming the logs unless the cluster is whole (a test may have broken it)."""
        self.wait_ready(timeout)

    def _logs(self) -> str:
        return "logs: " + ", ".join(str(node.log_file) for node in self.nodes)

    # What clients need ------------------------------------------------------------------------------------------

    def url(self) -> str:
        """The URL of the startup node (the first one); a cluster client discovers the rest from it."""
        node = self.nodes[0]
        auth = f":{self.password}@" if self.password else ""
        return f"valkey://{auth}{node.host}:{node.port}"

    def startup_nodes(self) -> list[tuple[str, int]]:
        return [node.address for node in self.nodes]

    # State, as the cluster reports it now -----------------------------------------------------------------------

    def _views(self) -> list[NodeView]:
        """``CLUSTER NODES`` as seen by the first running node that answers."""
        last_error: Exception | None = None
        for node in self._running():
            try:
                with node.client(socket_timeout=1, socket_connect_timeout=1) as client:
                    text = client.execute_command("CLUSTER", "NODES")
            except (valkey.ValkeyError, OSError) as exc:
                last_error = exc
                continue
            return parse_cluster_nodes(text.decode() if isinstance(text, bytes) else str(text))
        raise ServerError(f"no cluster node answered CLUSTER NODES; {self._logs()}") from last_error

    def _running(self) -> Iterator[ValkeyProcess]:
        return (node for node in self.nodes if node.is_running())

    def _node_at(self, address: tuple[str, int]) -> ValkeyProcess:
        for node in self.nodes:
            if node.address == address:
                return node
        raise ServerError(f"the cluster names {address}, which is none of {self.nodes}")

    def primaries(self) -> list[ValkeyProcess]:
        """Nodes that are primaries serving slots now, not flagged failed."""
        views = self._views()
        return [self._node_at(v.address) for v in views if v.is_primary and v.slots and not v.is_failed]

    def replicas(self) -> list[ValkeyProcess]:
        """Nodes that are replicas now, not flagged failed."""
        views = self._views()
        return [self._node_at(v.address) for v in views if not v.is_primary and not v.is_failed]

    def key_slot(self, key: str | bytes) -> int:
        for node in self._running():
            with node.client() as client:
                return int(client.execute_command("CLUSTER", "KEYSLOT", key))
        raise ServerError(f"no cluster node is running; {self._logs()}")

    def primary_for(self, key: str | bytes) -> ValkeyProcess:
        """The node that serves ``key``'s slot now."""
        slot = self.key_slot(key)
        for view in self._views():
            if view.is_primary and slot in view.slots:
                return self._node_at(view.address)
        raise ServerError(f"no node serves slot {slot} of key {key!r}; {self._logs()}")

    # Faults ---------------------------------------------------------------------------------------------------

    def kill_primary_of(self, key: str | bytes) -> ValkeyProcess:
        """``kill -9`` the primary serving ``key`` and return it (bring it back with :meth:`rejoin`)."""
        node = self.primary_for(key)
        node.kill()
        return node

    def wait_for_failover(self, killed: ValkeyProcess, timeout: float = 15.0) -> None:
        """Wait until every surviving node says ``cluster_state:ok`` and sees all slots served by running nodes,
        none of them by ``killed`` (so one of its replicas has taken its slots over)."""

        def failed_over() -> bool:
            survivors = list(self._running())
            for node in survivors:
                if not _cluster_ok(node):
                    return False
                with node.client(socket_timeout=1) as client:
                    text = client.execute_command("CLUSTER", "NODES")
                views = parse_cluster_nodes(text.decode() if isinstance(text, bytes) else str(text))
                serving = [v for v in views if v.is_primary and v.slots]
                if any(v.address == killed.address for v in serving):
                    return False
                if any(not self._node_at(v.address).is_running() for v in serving):
                    return False
                if _owned_slots(serving) != SLOTS:
                    return False
            return bool(survivors)

        try:
            wait_until(failed_over, timeout=timeout, message=f"a failover away from {killed.name}")
        except TimeoutError as exc:
            raise ServerError(
                f"no failover away from {killed.name} in {timeout:.0f}s; {self._logs()}"
            ) from exc

    def rejoin(self, node: ValkeyProcess, timeout: float = 30.0) -> None:
        """Restart a killed node on its port and wait until the cluster is whole again.

        Its ``nodes.conf`` gives it back its identity; finding its slots served under a newer epoch, it becomes a
        replica of the node that took them over.
        """
        node.start()
        self.wait_ready(timeout)

    # Resharding -----------------------------------------------------------------------------------------------

    def migrate_slot(self, slot: int, target: ValkeyProcess, *, hold: float = 0.0) -> None:
        """Move ``slot`` to the primary ``target`` as ``valkey-cli --cluster reshard`` does, one step at a time.

        IMPORTING on the target, MIGRATING on the source, MIGRATE of the slot's keys in batches, then
        ``SETSLOT NODE`` everywhere. ``hold`` seconds are spent between the last MIGRATE and the hand-over, so a
        client under load meets the ``ASK`` state (keys already moved, slot still the source's).
        """
        source = next((node for node in self.primaries() if slot in self._slots_of(node)), None)
        if source is None:
            raise ServerError(f"no primary serves slot {slot}; {self._logs()}")
        if source is target:
            raise ValueError(f"slot {slot} is already on {target.name}")
        source_id, target_id = self._node_id(source), self._node_id(target)
        with target.client() as to_client, source.client() as from_client:
            to_client.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
            from_client.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
            while keys := from_client.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100):
                host, port = target.address
                auth = ["AUTH", self.password] if self.password is not None else []
                from_client.execute_command("MIGRATE", host, port, "", 0, 5000, *auth, "KEYS", *keys)
            time.sleep(hold)  # the state under test lasts this long; nothing is waited for
            to_client.execute_command("CLUSTER", "SETSLOT", slot, "NODE", target_id)
            from_client.execute_command("CLUSTER", "SETSLOT", slot, "NODE", target_id)
        for node in self.primaries():
            if node not in (source, target):
                with node.client() as client:
                    client.execute_command("CLUSTER", "SETSLOT", slot, "NODE", target_id)

    def _slots_of(self, node: ValkeyProcess) -> frozenset[int]:
        return next((v.slots for v in self._views() if v.address == node.address), frozenset())

    def _node_id(self, node: ValkeyProcess) -> str:
        with node.client() as client:
            reply = client.execute_command("CLUSTER", "MYID")
        return reply.decode() if isinstance(reply, bytes) else str(reply)

    def __repr__(self) -> str:
        return f"<ValkeyCluster {len(self.nodes)} nodes in {self.workdir}>"


def start_cluster(
    workdir: Path,
    name: str,
    primaries: int = 3,
    replicas_per_primary: int = 1,
    node_timeout_ms: int = DEFAULT_NODE_TIMEOUT_MS,
    password: str | None = None,
) -> ValkeyCluster:
    """Start a cluster whose nodes live in ``workdir / name``; it is ok (all slots, all replicas linked) on return.

    With ``password`` every node requires it (``requirepass``, and ``masterauth`` for the replicas)."""
    cluster = ValkeyCluster(
        workdir / name,
        primaries=primaries,
        replicas_per_primary=replicas_per_primary,
        node_timeout_ms=node_timeout_ms,
        password=password,
    )
    return cluster.start()


class TLSCluster(ValkeyCluster):
    """A cluster whose clients speak TLS to every node: a :class:`TLSProxy` in front of each node, announced.

    The server binary has no TLS, so each node gets a proxy, and ``cluster-announce-port`` makes the node name its
    proxy's port wherever it names itself (``CLUSTER SLOTS``, ``CLUSTER NODES``, ``MOVED``), so a client that
    follows the slot map reaches every node through TLS. ``cluster-announce-tls-port`` would not do: a node names
    that port only to clients connected over its own TLS, and the proxies reach the nodes in plaintext.

    The nodes are joined in plaintext first (``valkey-cli --cluster create`` must reach them itself), and only then
    announce their proxies. There are no replicas: a replica reaches its primary at the primary's announced port,
    which is a TLS proxy it cannot speak to. Tests inspect the nodes directly (:meth:`primaries`, ``node.client()``),
    in plaintext, as for any other cluster.
    """

    def __init__(
        self,
        workdir: Path,
        certificates: CertificateFiles,
        *,
        primaries: int = 3,
        node_timeout_ms: int = DEFAULT_NODE_TIMEOUT_MS,
    ) -> None:
        if not isinstance(certificates, CertificateFiles):
            raise TypeError(
                f"certificates must be a CertificateFiles from create_certificates(), got {certificates!r}"
            )
        super().__init__(
            workdir, primaries=primaries, replicas_per_primary=0, node_timeout_ms=node_timeout_ms
        )
        self.certificates = certificates
        #: The TLS proxy of each node, by node name; filled by :meth:`start`.
        self._proxies: dict[str, TLSProxy] = {}

    def start(self, timeout: float = 30.0) -> TLSCluster:
        """Create the cluster in plaintext, put a TLS proxy in front of each node, and wait until every node's
        ``CLUSTER SLOTS`` names only proxy ports."""
        super().start(timeout)
        try:
            for node in self.nodes:
                self._proxies[node.name] = TLSProxy(node.host, node.port, self.certificates).start()
            for node in self.nodes:
                port = self._proxies[node.name].port
                # In the config file too, so a node restarted with ``rejoin`` still announces its proxy.
                node.set_config("cluster-announce-port", port)
                with node.client() as client:
                    client.config_set("cluster-announce-port", port)
            self._wait_announced(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        proxies, self._proxies = list(self._proxies.values()), {}
        try:
            for proxy in proxies:
                proxy.close()
        finally:
            super().stop()

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Wait as :meth:`ValkeyCluster.wait_ready` does, then (once the proxies run) until the slot map of every
        node names only proxy ports."""
        super().wait_ready(timeout)
        if self._proxies:
            self._wait_announced(timeout)

    def _wait_announced(self, timeout: float) -> None:
        proxy_ports = {proxy.port for proxy in self._proxies.values()}

        def announced() -> bool:
            for node in self.nodes:
                ports = _slot_map_ports(node)
                if not ports or not ports <= proxy_ports:
                    return False
            return True

        def named_now() -> str:
            maps = []
            for node in self.nodes:
                try:
                    maps.append(f"{node.name}: {sorted(_slot_map_ports(node))}")
                except (valkey.ValkeyError, OSError) as exc:
                    maps.append(f"{node.name}: {type(exc).__name__}")
            return f"every node's CLUSTER SLOTS to name only proxy ports {sorted(proxy_ports)} ({'; '.join(maps)})"

        try:
            wait_until(announced, timeout=timeout, message=named_now)
        except TimeoutError as exc:
            raise ServerError(f"{exc}; {self._logs()}") from exc

    # What clients need ------------------------------------------------------------------------------------------

    def url(self) -> str:
        """``valkeys://`` URL of the first node's proxy; a client finds the other proxies in the slot map."""
        return self.proxy_of(self.nodes[0]).url()

    @property
    def ca_file(self) -> Path:
        """The CA that signed the proxies' certificate: what a verifying client trusts."""
        return self.certificates.ca_file

    @property
    def proxies(self) -> list[TLSProxy]:
        """The proxies, in the order of :attr:`nodes`."""
        return [self.proxy_of(node) for node in self.nodes]

    def proxy_of(self, node: ValkeyProcess) -> TLSProxy:
        """The TLS proxy in front of ``node``."""
        proxy = self._proxies.get(node.name)
        if proxy is None:
            raise ServerError(f"{node.name} has no TLS proxy (is {self!r} started?)")
        return proxy

    def connections(self) -> dict[str, tuple[int, int]]:
        """For each node by name: (client connections the server has, connections open on its proxy).

        Every connection reaching the server through its proxy is one open on the proxy, so the two numbers are
        equal exactly when no client reached the node's plaintext port directly (the asking one not counted).
        """
        counts: dict[str, tuple[int, int]] = {}
        for node in self.nodes:
            with node.client() as client:
                own_id = client.client_id()
                clients = [entry for entry in client.client_list() if int(entry["id"]) != own_id]
            counts[node.name] = (len(clients), self.proxy_of(node).connection_count)
        return counts

    def wait_only_through_proxies(self, timeout: float = 5.0) -> None:
        """Wait until every node has client connections, each of them open on its proxy (see :meth:`connections`);
        a client that reached a plaintext port, or a node never reached, fails this after ``timeout`` seconds."""

        def through_proxies() -> bool:
            return all(server == proxy > 0 for server, proxy in self.connections().values())

        wait_until(
            through_proxies,
            timeout=timeout,
            message=lambda: (
                f"(server, proxy) connections of each node to be equal and not 0: {self.connections()}"
            ),
        )

    # The nodes behind the announced proxy addresses -------------------------------------------------------------

    def _node_at(self, address: tuple[str, int]) -> ValkeyProcess:
        for node in self.nodes:
            proxy = self._proxies.get(node.name)
            if proxy is not None and proxy.address == address:
                return node
        return super()._node_at(address)

    def _slots_of(self, node: ValkeyProcess) -> frozenset[int]:
        return next((v.slots for v in self._views() if self._node_at(v.address) is node), frozenset())

    def __repr__(self) -> str:
        return f"<TLSCluster {len(self.nodes)} nodes behind TLS proxies in {self.workdir}>"


def start_tls_cluster(
    workdir: Path,
    name: str,
    certificates: CertificateFiles,
    primaries: int = 3,
    node_timeout_ms: int = DEFAULT_NODE_TIMEOUT_MS,
) -> TLSCluster:
    """Start a :class:`TLSCluster` in ``workdir / name``; on return every node announces its TLS proxy."""
    cluster = TLSCluster(workdir / name, certificates, primaries=primaries, node_timeout_ms=node_timeout_ms)
    return cluster.start()


def _slot_map_ports(node: ValkeyProcess) -> set[int]:
    """The ports ``node``'s ``CLUSTER SLOTS`` names, primaries and replicas alike."""
    with node.client(socket_timeout=1, socket_connect_timeout=1) as client:
        reply = client.execute_command("CLUSTER", "SLOTS")
    return {int(member[1]) for _start, _end, *members in reply for member in members}


def _cluster_ok(node: ValkeyProcess, known_nodes: int | None = None) -> bool:
    with node.client(socket_timeout=1, socket_connect_timeout=1) as client:
        text = client.execute_command("CLUSTER", "INFO")
    info = dict(
        line.split(":", 1)
        for line in (text.decode() if isinstance(text, bytes) else str(text)).splitlines()
        if ":" in line
    )
    if info.get("cluster_state") != "ok" or info.get("cluster_slots_ok") != str(SLOTS):
        return False
    return known_nodes is None or info.get("cluster_known_nodes") == str(known_nodes)


def _owned_slots(views: list[NodeView]) -> int:
    owned: set[int] = set()
    for view in views:
        if view.is_primary:
            owned |= view.slots
    return len(owned)


def _replica_linked(node: ValkeyProcess) -> bool:
    with node.client(socket_timeout=1, socket_connect_timeout=1) as client:
        info: dict[str, Any] = client.info("replication")
    return info.get("role") == "slave" and info.get("master_link_status") == "up"

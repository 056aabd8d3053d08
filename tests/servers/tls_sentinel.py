"""A Sentinel group whose clients speak TLS to the Sentinels and to the primary, in front of TLS-less servers.

The server binary has no TLS, so TLS comes from proxies, as for the TLS cluster. Sentinel makes that harder: the
address a Sentinel reports for the primary is the one it reaches the node at, and the replicas replicate from that
same address, all in plaintext, while clients must speak TLS there. So each data node gets a proxy that takes both
(:class:`~servers.tls_proxy.TLSProxy` with ``plaintext_too``), and every member names only proxies: each node
announces its proxy (``replica-announce-port``), the replica follows the primary's proxy, the Sentinels monitor
it. Clients reach the Sentinels through a TLS-only proxy each; the Sentinels talk to each other directly.

A node killed through the group (:meth:`~TLSSentinelGroup.kill_node`, ``kill_primary``) is dead to its clients as a
TLS server of its own would be: its proxy stops listening first, so connecting is refused, and the proxied
connections end with the node's. That matters: a proxy still listening completes a client's TLS handshake and only
then finds the node gone and resets the connection; a connection broken after it was made is, to the client, a
possibly lost reply rather than a refused command (a first version of the kill -9 test, where the proxy kept
listening, counted 260 writes of unknown fate where plaintext has 1 or 2). :meth:`~TLSSentinelGroup.start_node` (and
``rejoin``) listen again on the same port.
"""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path
from typing import Any

from servers.certificates import CertificateFiles
from servers.process import ServerError, ValkeyProcess
from servers.tls_proxy import TLSProxy
from servers.topologies import SERVICE_NAME, SentinelGroup, sentinel_directives


class TLSSentinelGroup(SentinelGroup):
    """:class:`~servers.topologies.SentinelGroup` reached through TLS: ``host_entry()`` and
    :attr:`sentinel_kwargs` carry ``ssl`` and the CA, and every address a client is given or told is a proxy's.

    Tests still inspect the servers directly in plaintext (``node.client()``, ``sentinel.client()``).
    """

    transport = "tls"

    def __init__(
        self,
        workdir: Path,
        certificates: CertificateFiles,
        *,
        sentinels: int = 3,
        service_name: str = SERVICE_NAME,
    ) -> None:
        if not isinstance(certificates, CertificateFiles):
            raise TypeError(
                f"certificates must be a CertificateFiles from create_certificates(), got {certificates!r}"
            )
        super().__init__(workdir, sentinels=sentinels, service_name=service_name)
        self.certificates = certificates
        #: The proxy in front of each server, by process name; filled by :meth:`start`.
        self._proxies: dict[str, TLSProxy] = {}

    # Life cycle ----------------------------------------------------------------------------------------------

    def start(self, timeout: float = 20.0) -> TLSSentinelGroup:
        """Start a proxy per server, point every member at the node proxies, start the servers, wait until ready."""
        with ExitStack() as undo:
            undo.callback(self.stop)
            for node in self.nodes:
                self._proxies[node.name] = TLSProxy(
                    node.host, node.port, self.certificates, plaintext_too=True
                ).start()
            for sentinel in self.sentinels:
                self._proxies[sentinel.name] = TLSProxy(
                    sentinel.host, sentinel.port, self.certificates
                ).start()
            self._name_proxies_only()
            for process in [*self.nodes, *self.sentinels]:
                process.start()
                # A server whose first port was taken meanwhile moved to another one.
                self.proxy_of(process).retarget(*process.address)
            self.wait_ready(timeout)
            undo.pop_all()
        return self

    def _name_proxies_only(self) -> None:
        """Configure the servers before their first start so that each names the nodes by their proxies only."""
        for node in self.nodes:
            # Read by the primary from each replica (REPLCONF listening-port), so Sentinels learn replicas by it.
            node.set_config("replica-announce-port", self.proxy_of(node).port)
        primary = self.address_of(self.primary)
        self.replica.set_config("replicaof", f"{primary[0]} {primary[1]}")
        for sentinel in self.sentinels:
            sentinel.set_config("sentinel", sentinel_directives(self.service_name, primary))

    def stop(self) -> None:
        proxies, self._proxies = list(self._proxies.values()), {}
        try:
            super().stop()
        finally:
            for proxy in proxies:
                proxy.close()

    # What clients need ------------------------------------------------------------------------------------------

    @property
    def ca_file(self) -> Path:
        """The CA that signed the proxies' certificate: what a verifying client trusts."""
        return self.certificates.ca_file

    @property
    def sentinel_addresses(self) -> list[tuple[str, int]]:
        """The Sentinels' TLS proxies."""
        return [self.proxy_of(sentinel).address for sentinel in self.sentinels]

    @property
    def sentinel_kwargs(self) -> dict[str, Any]:
        return {**super().sentinel_kwargs, "ssl": True, "ssl_ca_certs": str(self.ca_file)}

    def host_entry(self, **client_options: Any) -> dict[str, Any]:
        """A ``hosts`` entry as for the plaintext group, with TLS and the CA for the primary's connections."""
        return super().host_entry(**{"ssl": True, "ssl_ca_certs": str(self.ca_file), **client_options})

    def check_transport(self, *nodes: ValkeyProcess) -> str:
        """Check that clients completed TLS handshakes with each of ``nodes`` and with a Sentinel, and return the
        counts as text (``TLS handshakes: node0 3, node1 2, Sentinels 4``).

        Without this a TLS test could pass in plaintext: the nodes' proxies take plaintext too, for the Sentinels
        and the replica. Those never speak TLS, so every handshake is a client's.
        """
        sentinels = sum(self.proxy_of(sentinel).tls_handshakes for sentinel in self.sentinels)
        counts = {node.name: self.proxy_of(node).tls_handshakes for node in nodes}
        text = "TLS handshakes: " + ", ".join(f"{name} {count}" for name, count in counts.items())
        text += f", Sentinels {sentinels}"
        if not sentinels or not all(counts.values()):
            raise AssertionError(f"clients did not use TLS with every server they needed ({text})")
        return text

    # Faults ---------------------------------------------------------------------------------------------------

    def kill_node(self, node: ValkeyProcess) -> None:
        """``kill -9`` ``node``, its proxy's port closed first, so that connecting is refused as by a dead server."""
        self.proxy_of(node).stop_listening()
        node.kill()

    def start_node(self, node: ValkeyProcess) -> None:
        """Start a killed node again, then its proxy listens on its port again."""
        node.start()
        proxy = self.proxy_of(node)
        proxy.retarget(*node.address)
        proxy.listen_again()

    # The proxies ----------------------------------------------------------------------------------------------

    def address_of(self, node: ValkeyProcess) -> tuple[str, int]:
        """The address of ``node``'s proxy: the only one the Sentinels, the other node and clients know."""
        return self.proxy_of(node).address

    def proxy_of(self, process: ValkeyProcess) -> TLSProxy:
        """The proxy in front of a node (TLS and plaintext) or a Sentinel (TLS only)."""
        proxy = self._proxies.get(process.name)
        if proxy is None:
            raise ServerError(f"{process.name} has no TLS proxy (is {self!r} started?)")
        return proxy

    def __repr__(self) -> str:
        return f"<TLSSentinelGroup {self.service_name!r} in {self.workdir}>"

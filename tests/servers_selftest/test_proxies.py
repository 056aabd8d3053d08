"""The fault and TLS proxies, tested against a small asyncio echo server rather than Valkey.

The echo server runs on a loop thread of its own, like the proxies, so a test may block its own loop (or have
none) without stalling the other end of the connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import ssl
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import valkey

from servers._loop_thread import LoopThread
from servers.certificates import CertificateFiles, create_certificates
from servers.fault_proxy import FaultProxy
from servers.process import ValkeyProcess
from servers.tls_proxy import TLSProxy

#: Upper bound on any wait for something that should happen at once; a miss is a failure, not a slow pass.
WAIT = 2.0


class EchoServer:
    """Sends ``greeting`` to each new connection, then echoes every byte back; counts what it sees."""

    def __init__(self, greeting: bytes = b"") -> None:
        self.greeting = greeting
        self.accepted = 0
        self.open_connections = 0
        self.received = 0
        self.port = 0
        self._thread = LoopThread("echo-server")
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    def start(self) -> EchoServer:
        self._thread.start()
        self.port = self._thread.call(self._listen())
        return self

    def close(self) -> None:
        if self._thread.running:
            self._thread.call(self._shutdown())
        self._thread.stop()

    async def _listen(self) -> int:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self.open_connections += 1
        self._writers.add(writer)
        try:
            writer.write(self.greeting)
            while data := await reader.read(65536):
                self.received += len(data)
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            self.open_connections -= 1
            self._writers.discard(writer)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.close()
        if self._server is not None:
            await self._server.wait_closed()


@pytest.fixture
def echo() -> Iterator[EchoServer]:
    server = EchoServer().start()
    yield server
    server.close()


@pytest.fixture
def proxy(echo: EchoServer) -> Iterator[FaultProxy]:
    with FaultProxy("127.0.0.1", echo.port) as fault_proxy:
        yield fault_proxy


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> CertificateFiles:
    return create_certificates(tmp_path_factory.mktemp("certificates"))


@pytest.fixture
def tls_proxy(echo: EchoServer, certificates: CertificateFiles) -> Iterator[TLSProxy]:
    with TLSProxy("127.0.0.1", echo.port, certificates) as proxy:
        yield proxy


class Clients:
    """Opens client connections for a test and closes whatever is left of them when it ends."""

    def __init__(self) -> None:
        self._writers: list[asyncio.StreamWriter] = []

    async def open(self, port: int, **kwargs: Any) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port, **kwargs), WAIT)
        self._writers.append(writer)
        return reader, writer

    async def close_all(self) -> None:
        for writer in self._writers:
            await close(writer)


@pytest.fixture
async def clients() -> AsyncIterator[Clients]:
    opened = Clients()
    yield opened
    await opened.close_all()


async def assert_reset(clients: Clients, port: int) -> None:
    """A new connection to ``port`` is reset: while connecting or at the first read, depending on timing."""
    with pytest.raises(ConnectionResetError):
        await connect_and_read(clients, port)


async def connect_and_read(clients: Clients, port: int) -> bytes:
    reader, _ = await clients.open(port)
    return await asyncio.wait_for(reader.read(), WAIT)


async def round_trip(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, data: bytes) -> bytes:
    writer.write(data)
    return await asyncio.wait_for(reader.readexactly(len(data)), WAIT)


async def close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(ConnectionError, ssl.SSLError):
        await writer.wait_closed()


async def eventually(condition: Callable[[], bool], what: str) -> None:
    """Wait until ``condition()`` holds, checking every 10 ms for at most ``WAIT`` seconds."""
    deadline = time.monotonic() + WAIT
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {WAIT}s waiting for {what}")
        await asyncio.sleep(0.01)


# Plain forwarding -----------------------------------------------------------------------------------------------


async def test_forwards_both_ways_on_its_own_port(
    proxy: FaultProxy, echo: EchoServer, clients: Clients
) -> None:
    assert proxy.port not in (0, echo.port)
    assert proxy.address == ("127.0.0.1", proxy.port)
    assert proxy.url() == f"valkey://127.0.0.1:{proxy.port}"
    assert proxy.url("redis", db=2, password="pw") == f"redis://:pw@127.0.0.1:{proxy.port}/2"
    reader, writer = await clients.open(proxy.port)
    assert await round_trip(reader, writer, b"hello") == b"hello"
    # Several megabytes: more than the proxy buffers per direction, so its backpressure path runs too.
    payload = bytes(range(256)) * 16384
    assert await round_trip(reader, writer, payload) == payload
    assert proxy.connection_count == 1
    await close(writer)
    await proxy.wait_for_connections_async(0)
    assert echo.received == 5 + len(payload)


def test_works_from_a_test_without_an_event_loop(proxy: FaultProxy) -> None:
    with socket.create_connection(proxy.address, timeout=WAIT) as client:
        client.sendall(b"sync")
        assert client.recv(4, socket.MSG_WAITALL) == b"sync"
        proxy.wait_for_connections(1)
    proxy.wait_for_connections(0)


async def test_connection_count_follows_clients_back_to_zero(proxy: FaultProxy, clients: Clients) -> None:
    opened = [await clients.open(proxy.port) for _ in range(3)]
    await proxy.wait_for_connections_async(3)
    for _, writer in opened:
        await close(writer)
    await proxy.wait_for_connections_async(0)
    assert proxy.connection_count == 0


async def test_wait_for_connections_times_out_naming_the_count(proxy: FaultProxy) -> None:
    with pytest.raises(TimeoutError, match=r"0 open connection\(s\) after 0.1s, expected 1"):
        await proxy.wait_for_connections_async(1, timeout=0.1)
    with pytest.raises(TimeoutError, match=r"0 open connection\(s\) after 0.1s, expected 2"):
        proxy.wait_for_connections(2, timeout=0.1)


async def test_half_close_delivers_the_reply_then_eof(proxy: FaultProxy, clients: Clients) -> None:
    reader, writer = await clients.open(proxy.port)
    writer.write(b"last words")
    writer.write_eof()
    assert await asyncio.wait_for(reader.read(), WAIT) == b"last words"
    await proxy.wait_for_connections_async(0)


# Latency and pause ----------------------------------------------------------------------------------------------


async def test_latency_delays_each_direction(proxy: FaultProxy, clients: Clients) -> None:
    reader, writer = await clients.open(proxy.port)
    latency = 0.1
    proxy.set_latency(latency)
    started = time.monotonic()
    assert await round_trip(reader, writer, b"slow") == b"slow"
    # There and back: the delay applies once per direction. A lower bound only; machines may be slower.
    assert time.monotonic() - started >= 2 * latency
    proxy.set_latency(0)
    assert await round_trip(reader, writer, b"fast") == b"fast"


async def test_latency_keeps_the_byte_order(proxy: FaultProxy, clients: Clients) -> None:
    reader, writer = await clients.open(proxy.port)
    proxy.set_latency(0.02)
    chunks = [f"{i:04d};".encode() for i in range(200)]
    for chunk in chunks:
        writer.write(chunk)
        await writer.drain()
        await asyncio.sleep(0)
    expected = b"".join(chunks)
    assert await asyncio.wait_for(reader.readexactly(len(expected)), WAIT) == expected


async def test_pause_holds_bytes_until_resume(proxy: FaultProxy, echo: EchoServer, clients: Clients) -> None:
    reader, writer = await clients.open(proxy.port)
    assert await round_trip(reader, writer, b"before") == b"before"
    proxy.pause()
    writer.write(b"held")
    late_reader, late_writer = await clients.open(proxy.port)
    late_writer.write(b"late")
    # The one deliberate wait for nothing to happen: bytes must not get through while paused.
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(reader.read(1), 0.3)
    assert echo.received == len(b"before")
    assert proxy.connection_count == 2
    proxy.resume()
    assert await asyncio.wait_for(reader.readexactly(4), WAIT) == b"held"
    assert await asyncio.wait_for(late_reader.readexactly(4), WAIT) == b"late"


# Cut, refuse, retarget ------------------------------------------------------------------------------------------


async def test_cut_resets_open_connections_and_new_ones_work(
    proxy: FaultProxy, echo: EchoServer, clients: Clients
) -> None:
    opened = [await clients.open(proxy.port) for _ in range(2)]
    for reader, writer in opened:
        assert await round_trip(reader, writer, b"ok") == b"ok"
    assert proxy.cut() == 2
    assert proxy.connection_count == 0
    for reader, _ in opened:
        with pytest.raises(ConnectionResetError):
            await asyncio.wait_for(reader.read(), WAIT)
    await eventually(lambda: echo.open_connections == 0, "the server side of the cut connections to close")

    reader, writer = await clients.open(proxy.port)
    assert await round_trip(reader, writer, b"again") == b"again"


async def test_a_graceful_cut_ends_open_connections_with_eof_and_new_ones_work(
    proxy: FaultProxy, echo: EchoServer, clients: Clients
) -> None:
    opened = [await clients.open(proxy.port) for _ in range(2)]
    for reader, writer in opened:
        assert await round_trip(reader, writer, b"ok") == b"ok"
    assert proxy.cut(graceful=True) == 2
    assert proxy.connection_count == 0
    for reader, _ in opened:
        assert await asyncio.wait_for(reader.read(), WAIT) == b""  # a FIN, not a reset
    await eventually(lambda: echo.open_connections == 0, "the server side of the cut connections to close")

    reader, writer = await clients.open(proxy.port)
    assert await round_trip(reader, writer, b"again") == b"again"


async def test_refuse_resets_new_connections_until_accept(
    proxy: FaultProxy, echo: EchoServer, clients: Clients
) -> None:
    port = proxy.port
    kept_reader, kept_writer = await clients.open(port)
    assert await round_trip(kept_reader, kept_writer, b"kept") == b"kept"
    proxy.refuse()
    await assert_reset(clients, port)
    assert echo.accepted == 1
    assert await round_trip(kept_reader, kept_writer, b"still") == b"still"

    proxy.accept()
    assert proxy.port == port
    reader, writer = await clients.open(port)
    assert await round_trip(reader, writer, b"back") == b"back"
    assert echo.accepted == 2
    # Every connection made to the proxy is counted, the refused one too.
    assert proxy.accepted_connections == 3


async def test_stop_listening_refuses_new_connections_until_listening_again(
    proxy: FaultProxy, echo: EchoServer, clients: Clients
) -> None:
    port = proxy.port
    kept_reader, kept_writer = await clients.open(port)
    # Forwarded, so taken off the listening socket: what is still queued there is dropped with it.
    assert await round_trip(kept_reader, kept_writer, b"kept") == b"kept"
    proxy.stop_listening()
    proxy.stop_listening()  # already stopped: nothing to do
    with pytest.raises(ConnectionRefusedError):
        await clients.open(port)
    assert await round_trip(kept_reader, kept_writer, b"still") == b"still"

    proxy.listen_again()
    proxy.listen_again()  # already listening: nothing to do
    assert proxy.port == port
    reader, writer = await clients.open(port)
    assert await round_trip(reader, writer, b"back") == b"back"
    assert echo.accepted == 2


async def test_retarget_sends_new_connections_elsewhere(proxy: FaultProxy, clients: Clients) -> None:
    first = EchoServer(greeting=b"A").start()
    second = EchoServer(greeting=b"B").start()
    try:
        proxy.retarget("127.0.0.1", first.port)
        old_reader, old_writer = await clients.open(proxy.port)
        assert await asyncio.wait_for(old_reader.readexactly(1), WAIT) == b"A"
        proxy.retarget("127.0.0.1", second.port)
        assert proxy.target == ("127.0.0.1", second.port)
        new_reader, _ = await clients.open(proxy.port)
        assert await asyncio.wait_for(new_reader.readexactly(1), WAIT) == b"B"
        assert await round_trip(old_reader, old_writer, b"old") == b"old"
        assert first.received == 3
        await clients.close_all()
    finally:
        first.close()
        second.close()


async def test_unreachable_target_resets_the_client(clients: Clients) -> None:
    gone = EchoServer().start()
    gone.close()
    with FaultProxy("127.0.0.1", gone.port) as proxy:
        await assert_reset(clients, proxy.port)
        await proxy.wait_for_connections_async(0)


# Bad input and life cycle ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "port", "error", "message"),
    [
        ("", 6379, ValueError, "host must not be empty"),
        (b"127.0.0.1", 6379, TypeError, "host must be a str, got b'127.0.0.1'"),
        ("127.0.0.1", 0, ValueError, "port must be from 1 to 65535, got 0"),
        ("127.0.0.1", 65536, ValueError, "port must be from 1 to 65535, got 65536"),
        ("127.0.0.1", "6379", TypeError, "port must be an int, got '6379'"),
        ("127.0.0.1", True, TypeError, "port must be an int, got True"),
    ],
)
def test_rejects_a_bad_target(
    proxy: FaultProxy, host: Any, port: Any, error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=re.escape(message)):
        FaultProxy(host, port)
    with pytest.raises(error, match=re.escape(message)):
        proxy.retarget(host, port)
    assert proxy.target[1] != port


@pytest.mark.parametrize(
    ("seconds", "error"),
    [(-0.1, ValueError), (float("nan"), ValueError), (float("inf"), ValueError), ("1", TypeError)],
)
def test_rejects_a_bad_latency(proxy: FaultProxy, seconds: Any, error: type[Exception]) -> None:
    with pytest.raises(error, match=rf"latency must be .*, got {re.escape(repr(seconds))}"):
        proxy.set_latency(seconds)


def test_controls_need_a_running_proxy(echo: EchoServer) -> None:
    proxy = FaultProxy("127.0.0.1", echo.port)
    with pytest.raises(RuntimeError, match="not listening"):
        _ = proxy.port
    with pytest.raises(RuntimeError, match="not running"):
        proxy.pause()
    proxy.start()
    proxy.close()
    proxy.close()
    with pytest.raises(RuntimeError, match="not running"):
        proxy.cut()


def test_close_resets_open_connections(echo: EchoServer) -> None:
    proxy = FaultProxy("127.0.0.1", echo.port).start()
    with socket.create_connection(proxy.address, timeout=WAIT) as client:
        client.sendall(b"x")
        assert client.recv(1) == b"x"
        proxy.close()
        with pytest.raises(ConnectionResetError):
            client.recv(1)


# TLS ------------------------------------------------------------------------------------------------------------


def test_certificates_are_pem_files_in_the_directory(certificates: CertificateFiles) -> None:
    for path in (certificates.ca_file, certificates.cert_file, certificates.wrong_ca_file):
        assert path.read_text().startswith("-----BEGIN CERTIFICATE-----")
    assert certificates.key_file.read_text().startswith("-----BEGIN PRIVATE KEY-----")
    assert certificates.ca_file.read_bytes() != certificates.wrong_ca_file.read_bytes()


def test_certificates_need_an_existing_directory(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="missing"):
        create_certificates(tmp_path / "missing")


@pytest.mark.parametrize("server_hostname", ["127.0.0.1", "localhost"])
async def test_tls_client_trusting_the_ca_verifies(
    tls_proxy: TLSProxy, clients: Clients, server_hostname: str
) -> None:
    assert tls_proxy.url() == f"valkeys://127.0.0.1:{tls_proxy.port}"
    context = ssl.create_default_context(cafile=tls_proxy.ca_file)
    reader, writer = await clients.open(tls_proxy.port, ssl=context, server_hostname=server_hostname)
    assert await round_trip(reader, writer, b"secret") == b"secret"
    await close(writer)
    await tls_proxy.wait_for_connections_async(0)


async def test_tls_client_without_certificate_checks_connects(tls_proxy: TLSProxy, clients: Clients) -> None:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    reader, writer = await clients.open(tls_proxy.port, ssl=context)
    assert await round_trip(reader, writer, b"unchecked") == b"unchecked"


async def test_tls_client_trusting_the_wrong_ca_fails_verification(
    tls_proxy: TLSProxy, certificates: CertificateFiles, echo: EchoServer, clients: Clients
) -> None:
    context = ssl.create_default_context(cafile=certificates.wrong_ca_file)
    with pytest.raises(ssl.SSLCertVerificationError):
        await clients.open(tls_proxy.port, ssl=context)
    await tls_proxy.wait_for_connections_async(0)
    assert echo.accepted == 0


async def test_tls_client_to_a_plaintext_port_fails(
    proxy: FaultProxy, certificates: CertificateFiles, clients: Clients
) -> None:
    context = ssl.create_default_context(cafile=certificates.ca_file)
    with pytest.raises(ssl.SSLError):
        await clients.open(proxy.port, ssl=context, ssl_handshake_timeout=WAIT)


async def test_plaintext_client_on_the_tls_port_is_dropped(tls_proxy: TLSProxy, clients: Clients) -> None:
    reader, writer = await clients.open(tls_proxy.port)
    writer.write(b"*1\r\n$4\r\nPING\r\n")
    # The handshake fails on bytes that are not TLS: the client sees the connection end, never a reply.
    with contextlib.suppress(ConnectionResetError):
        assert await asyncio.wait_for(reader.read(), WAIT) == b""
    await tls_proxy.wait_for_connections_async(0)


async def test_cut_during_a_tls_handshake(tls_proxy: TLSProxy, echo: EchoServer, clients: Clients) -> None:
    reader, _ = await clients.open(tls_proxy.port)  # plain TCP: the proxy waits for a ClientHello
    await tls_proxy.wait_for_connections_async(1)
    assert tls_proxy.cut() == 1
    with pytest.raises(ConnectionResetError):
        await asyncio.wait_for(reader.read(), WAIT)
    assert echo.accepted == 0


async def test_faults_apply_to_tls_connections(tls_proxy: TLSProxy, clients: Clients) -> None:
    context = ssl.create_default_context(cafile=tls_proxy.ca_file)
    reader, writer = await clients.open(tls_proxy.port, ssl=context)
    assert await round_trip(reader, writer, b"one") == b"one"
    assert tls_proxy.cut() == 1
    with pytest.raises(ConnectionResetError):
        await asyncio.wait_for(reader.read(), WAIT)


# TLS and plaintext on one port ----------------------------------------------------------------------------------


@pytest.fixture
def dual_proxy(echo: EchoServer, certificates: CertificateFiles) -> Iterator[TLSProxy]:
    with TLSProxy("127.0.0.1", echo.port, certificates, plaintext_too=True) as proxy:
        yield proxy


async def test_one_port_serves_tls_and_plaintext_clients(dual_proxy: TLSProxy, clients: Clients) -> None:
    context = ssl.create_default_context(cafile=dual_proxy.ca_file)
    tls_reader, tls_writer = await clients.open(dual_proxy.port, ssl=context)
    plain_reader, plain_writer = await clients.open(dual_proxy.port)
    # Past the first byte, content no longer matters: a TLS record type inside TLS, RESP in plaintext.
    for reader, writer, data in (
        (tls_reader, tls_writer, b"\x16 inside TLS"),
        (plain_reader, plain_writer, b"*1\r\n$4\r\nPING\r\n"),
    ):
        assert await round_trip(reader, writer, data) == data
    assert tls_writer.get_extra_info("ssl_object") is not None
    assert (dual_proxy.tls_handshakes, dual_proxy.plaintext_connections) == (1, 1)


async def test_a_tls_port_alone_counts_handshakes_and_no_plaintext(
    tls_proxy: TLSProxy, clients: Clients
) -> None:
    context = ssl.create_default_context(cafile=tls_proxy.ca_file)
    reader, writer = await clients.open(tls_proxy.port, ssl=context)
    assert await round_trip(reader, writer, b"one") == b"one"
    assert (tls_proxy.tls_handshakes, tls_proxy.plaintext_connections) == (1, 0)


async def test_a_client_leaving_before_its_first_byte_is_never_forwarded(
    dual_proxy: TLSProxy, echo: EchoServer, clients: Clients
) -> None:
    _, writer = await clients.open(dual_proxy.port)
    await dual_proxy.wait_for_connections_async(1)
    await close(writer)
    await dual_proxy.wait_for_connections_async(0)
    assert echo.accepted == 0
    assert (dual_proxy.tls_handshakes, dual_proxy.plaintext_connections) == (0, 0)


async def test_cut_before_the_first_byte_resets_the_client(
    dual_proxy: TLSProxy, echo: EchoServer, clients: Clients
) -> None:
    reader, _ = await clients.open(dual_proxy.port)
    await dual_proxy.wait_for_connections_async(1)
    assert dual_proxy.cut() == 1
    with pytest.raises(ConnectionResetError):
        await asyncio.wait_for(reader.read(), WAIT)
    assert echo.accepted == 0


def test_plaintext_too_needs_tls(echo: EchoServer) -> None:
    with pytest.raises(ValueError, match="plaintext_too=True needs an ssl_context"):
        FaultProxy("127.0.0.1", echo.port, plaintext_too=True)


# Through both proxies to a real server --------------------------------------------------------------------------


def test_valkey_through_the_tls_and_fault_proxies(
    valkey_server: ValkeyProcess, certificates: CertificateFiles, key_prefix: str
) -> None:
    with (
        FaultProxy(*valkey_server.address) as fault,
        TLSProxy("127.0.0.1", fault.port, certificates) as tls,
        valkey.Valkey.from_url(
            tls.url(), ssl_ca_certs=str(tls.ca_file), socket_timeout=WAIT, socket_connect_timeout=WAIT
        ) as client,
    ):
        assert client.ping()
        client.set(f"{key_prefix}k", b"v")
        assert client.get(f"{key_prefix}k") == b"v"
        assert client.connection_pool.connection_kwargs["port"] == tls.port

        latency = 0.05
        fault.set_latency(latency)
        started = time.monotonic()
        assert client.ping()
        assert time.monotonic() - started >= 2 * latency
        fault.set_latency(0)

        assert fault.cut() == 1
        # The TLS proxy notices its upstream is gone and closes the client's connection; the client reconnects.
        tls.wait_for_connections(0)
        assert client.ping()
        assert fault.connection_count == 1

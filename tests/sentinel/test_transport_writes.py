"""A write on a transport that closed under its writer (transport_writes.py), on asyncio's event loop and uvloop's.

asyncio's transport drops such a write and uvloop's raises ``RuntimeError``; the layers must see one failure for
both, "not sent", whatever loop the test run uses (``--event-loop``). Each case makes its own loop of each kind.
"""

from __future__ import annotations

import asyncio

import pytest
from valkey import exceptions as valkey_errors

from channels_valkey.sentinel import CommandNotSent, ConnectionManager, Failure, classify, decode_hosts
from channels_valkey.sentinel.transport_writes import closed_before_write, write_command

from conftest import ON_EACH_LOOP, run_on_new_loop
from servers.fault_proxy import FaultProxy
from servers.process import ValkeyProcess


async def _closed_writer(server: ValkeyProcess) -> asyncio.StreamWriter:
    """A writer whose transport the loop has closed, as after the server reset the connection."""
    host, port = server.address
    _, writer = await asyncio.open_connection(host, port)
    writer.transport.abort()
    await asyncio.sleep(0)  # the loop runs the close it scheduled
    return writer


PING = b"*1\r\n$4\r\nPING\r\n"
#: One packed command (written as it is) and two (written together), the two ways write_command writes.
ONE_AND_TWO_COMMANDS = pytest.mark.parametrize(
    "commands", [1, 2], ids=["one command", "two commands at once"]
)


@ON_EACH_LOOP
@ONE_AND_TWO_COMMANDS
def test_a_write_on_a_closed_transport_is_a_command_not_sent(
    valkey_server: ValkeyProcess, loop_kind: str, commands: int
) -> None:
    async def write() -> None:
        writer = await _closed_writer(valkey_server)
        with pytest.raises(
            CommandNotSent, match="the lane's connection was reset before the command reached"
        ):
            write_command(writer.transport, [PING] * commands, "the lane")

    run_on_new_loop(loop_kind, write())


@ON_EACH_LOOP
@ONE_AND_TWO_COMMANDS
def test_a_write_on_an_open_transport_reaches_the_server_whole(
    valkey_server: ValkeyProcess, loop_kind: str, commands: int
) -> None:
    async def write() -> bytes:
        host, port = valkey_server.address
        reader, writer = await asyncio.open_connection(host, port)
        try:
            write_command(writer.transport, [PING] * commands, "the lane")
            return await asyncio.wait_for(reader.readexactly(len(b"+PONG\r\n") * commands), timeout=5)
        finally:
            writer.close()

    assert run_on_new_loop(loop_kind, write()) == b"+PONG\r\n" * commands


def test_uvloops_refusal_is_told_apart_from_other_runtime_errors(valkey_server: ValkeyProcess) -> None:
    async def refusal() -> BaseException:
        writer = await _closed_writer(valkey_server)
        try:
            writer.writelines([PING])
        except RuntimeError as error:
            return error
        raise AssertionError("uvloop wrote on a closed transport without complaint")

    error = run_on_new_loop("uvloop", refusal())
    assert closed_before_write(error)
    assert classify(error) is Failure.NOT_RUN
    assert not closed_before_write(RuntimeError("Event loop is closed"))
    assert classify(RuntimeError("Event loop is closed")) is None


@ON_EACH_LOOP
def test_a_command_on_a_connection_the_server_cut_is_sent_again_on_a_new_one(
    fault_proxy: FaultProxy, key_prefix: str, loop_kind: str
) -> None:
    """valkey-py's own write (not the lane's) on a pooled connection whose transport closes as the command is about
    to be written: a connection failure the retries know (uvloop's RuntimeError included), so the command goes
    again on a new connection."""

    async def cut_between_commands() -> bytes | None:
        manager = ConnectionManager(decode_hosts([fault_proxy.url()]))
        try:
            key = f"{key_prefix}k"
            await manager.execute(0, lambda client: client.set(key, "v"), idempotent=True)
            fault_proxy.cut()  # a reset, which the loop reads while valkey-py takes the connection from its pool
            value: bytes | None = await manager.execute(0, lambda client: client.get(key), idempotent=True)
            return value
        finally:
            await manager.close()

    assert run_on_new_loop(loop_kind, cut_between_commands()) == b"v"


def test_a_runtime_error_of_another_kind_is_not_retried() -> None:
    assert classify(RuntimeError("unable to perform operation: something else")) is None
    assert not closed_before_write(valkey_errors.ConnectionError("the handler is closed"))

"""An ACL user whose rights are taken away while the layer runs, then given back (issue #18): a clear error at the
first use, no reconnect storm (counted on the server), and the layer works again once the rights are back.

Two ways rights go: the user's command rights are removed (``-@all``: its open connections stay, every command is
refused with ``NOPERM``), or the user is switched off and its connections killed (every reconnection is refused at
``AUTH``). Both layers; a normal channel, which both layers carry in a queue.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from channels_valkey.sentinel import ReplyLost, ShardUnavailable

from faults.support import BACKENDS, make_layer
from servers.process import ValkeyProcess
from servers.topologies import add_acl_user

USER, PASSWORD = "fault-user", "fault-secret"
ALL_RIGHTS = ["~*", "&*", "+@all"]
#: Sends tried while the rights are gone: each must fail by itself, without the layer retrying behind it.
TRIES = 20


def _accepted(server: ValkeyProcess) -> int:
    return int(server.info("stats")["total_connections_received"])


def _refused_commands(server: ValkeyProcess) -> int:
    """Commands the server refused for want of rights, as its ACL log counts them (the count of each entry)."""
    with server.client() as client:
        return sum(int(entry["count"]) for entry in client.acl_log())


@BACKENDS
@pytest.mark.parametrize("how", ["commands-removed", "user-off"])
async def test_rights_taken_away_fail_clearly_without_a_storm_and_come_back(
    backend: str, how: str, server_factory: Callable[..., ValkeyProcess], key_prefix: str
) -> None:
    server = server_factory()
    add_acl_user(server, USER, PASSWORD, ALL_RIGHTS)
    host, port = server.address
    layer = make_layer(backend, [f"valkey://{USER}:{PASSWORD}@{host}:{port}/0"], key_prefix)
    channel = f"{key_prefix}jobs"
    try:
        await layer.send(channel, {"type": "job", "n": 0})
        assert (await layer.receive(channel))["n"] == 0

        with server.client() as admin:
            admin.acl_log_reset()
            if how == "commands-removed":
                admin.execute_command("ACL", "SETUSER", USER, "-@all")
            else:
                admin.execute_command("ACL", "SETUSER", USER, "off")
                admin.client_kill_filter(user=USER)
            if how == "user-off":
                # The send that meets the killed connection cannot know whether the server read it first.
                with pytest.raises(ReplyLost):
                    await layer.send(channel, {"type": "job", "n": "killed"})
        accepted_before = _accepted(server)
        for n in range(TRIES):
            with pytest.raises(ShardUnavailable) as caught:
                await layer.send(channel, {"type": "job", "n": n})
            # Clear: names the shard (never the password) and what the server said; not a lost reply, since a
            # refused command did not run.
            assert not isinstance(caught.value, ReplyLost)
            assert "shard 0" in str(caught.value)
            assert PASSWORD not in str(caught.value)
            said = str(caught.value)
            assert "NoPermissionError" in said or "AuthenticationError" in said, said
        opened = _accepted(server) - accepted_before - 1  # the count's own connection
        refused = _refused_commands(server)
        print(
            f"\n{backend.rsplit('.', 1)[1]}, {how}: {TRIES} sends refused, {opened} connections, {refused} refusals"
        )
        # One attempt per send: no retries behind the caller, and no reconnection loop. Refusals: one per send,
        # plus at most two once: the core layer's first EVALSHA before it falls back to EVAL, and the Pub/Sub
        # listener's keep-alive PING on the connection it keeps subscribed.
        assert opened <= TRIES
        assert refused <= TRIES + 2

        with server.client() as admin:
            admin.execute_command("ACL", "SETUSER", USER, "on", *ALL_RIGHTS)
        await layer.send(channel, {"type": "job", "n": "back"})
        assert (await layer.receive(channel))["n"] == "back"
    finally:
        await layer.close_pools()

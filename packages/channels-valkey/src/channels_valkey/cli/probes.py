"""What ``check`` asks each server: who it is and how far away, how it evicts, and which of the layer's commands
the connected user may run.

The ACL is asked without changing any data. Where the user may run ``ACL DRYRUN``, every command is simulated
for that user. Otherwise each command runs for real in a form that changes nothing, on a key under the layer's
prefix that does not exist (``ZADD key XX ...`` adds nothing, ``EXPIRE`` of a missing key sets nothing, ``EVALSHA``
of an unknown script runs nothing, blocking pops wait a millisecond on an empty key); a ``NOPERM`` reply, for the
command, the key or the channel, means the layer would be refused too.

On a cluster node the probe names may hash to a slot another node serves; that does not change the answer: Valkey
checks the ACL before it redirects, so a ``MOVED`` reply means the ACL let the command through (``NOPERM`` comes
first, whichever node serves the slot).
"""

from __future__ import annotations

import contextlib
import secrets
import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import valkey.asyncio as avalkey
from valkey import exceptions as valkey_errors

from channels_valkey.cli.requirements import Names, Need
from channels_valkey.core import ValkeyChannelLayer
from channels_valkey.pubsub import ValkeyPubSubChannelLayer
from channels_valkey.sentinel import glob_escape

Level = Literal["ok", "note", "warning", "error"]

#: A script SHA no server knows: ``EVALSHA`` of it is refused by the ACL or answers NOSCRIPT, and runs nothing.
UNKNOWN_SHA = "0" * 40
#: Seconds a probing blocking pop waits on its empty key.
PROBE_BLOCK = "0.001"
PING_ROUNDS = 3
#: Commands probed in pairs on a connection of their own (subscribing, then unsubscribing), by either command.
SUBSCRIBE_PAIRS = {
    command: pair
    for pair in (("SUBSCRIBE", "UNSUBSCRIBE"), ("SSUBSCRIBE", "SUNSUBSCRIBE"))
    for command in pair
}
#: Commands whose key is a Pub/Sub name (the layer asks whether the name's slot still lives where it published).
CHANNEL_AS_KEY = frozenset({"EXISTS"})


# Server facts -------------------------------------------------------------------------------------------------


@dataclass
class ServerFacts:
    """What a server says about itself; None where it would not say."""

    name: str | None = None
    version: str | None = None
    role: str | None = None
    mode: str | None = None
    latency_ms: float | None = None
    maxmemory_policy: str | None = None
    #: Why ``maxmemory_policy`` is unknown (the ACL refusing ``CONFIG GET``).
    policy_unknown_because: str | None = None
    #: ``cluster_state`` of ``CLUSTER INFO`` on a cluster node ("ok" or "fail"); None elsewhere, or when refused.
    cluster_state: str | None = None


async def server_facts(client: avalkey.Valkey) -> ServerFacts:
    """Name, version, role and mode (``HELLO``, which every user may run), PING latency, maxmemory-policy, and on
    a cluster node the cluster's state.

    Connection failures propagate: the caller reports the shard as unreachable.
    """
    facts = ServerFacts()
    hello = await _hello(client)
    facts.name = hello.get("server")
    facts.version = hello.get("version")
    facts.role = hello.get("role")
    facts.mode = hello.get("mode")
    facts.latency_ms = await ping_latency(client)
    try:
        reply = await client.execute_command("CONFIG", "GET", "maxmemory-policy")
    except valkey_errors.ResponseError as error:
        facts.policy_unknown_because = str(error)
    else:
        values = _pairs(reply)
        facts.maxmemory_policy = values.get("maxmemory-policy")
    if facts.mode == "cluster":
        facts.cluster_state = await _cluster_state(client)
    return facts


async def _cluster_state(client: avalkey.Valkey) -> str | None:
    """``cluster_state`` from ``CLUSTER INFO``; None when the ACL refuses it (the layers never send it)."""
    try:
        reply = await client.execute_command("CLUSTER", "INFO")
    except valkey_errors.ResponseError:
        return None
    for line in _text(reply).splitlines():
        name, _, value = line.partition(":")
        if name == "cluster_state":
            return value.strip()
    return None


async def ping_latency(client: avalkey.Valkey, rounds: int = PING_ROUNDS) -> float:
    """Median round trip of ``PING`` in milliseconds; a PING the ACL refuses is a round trip all the same."""
    timings = []
    for _ in range(rounds):
        started = time.perf_counter()
        with contextlib.suppress(valkey_errors.NoPermissionError):
            await client.execute_command("PING")
        timings.append((time.perf_counter() - started) * 1000)
    return statistics.median(timings)


async def _hello(client: avalkey.Valkey) -> dict[str, str]:
    protocol = client.connection_pool.connection_kwargs.get("protocol") or 2
    try:
        # HELLO with the protocol the connection already speaks changes nothing about it.
        return _pairs(await client.execute_command("HELLO", str(protocol)))
    except valkey_errors.ResponseError:
        pass
    # Servers older than Redis 6 have no HELLO; INFO may be refused by the ACL.
    try:
        info = await client.info("server")
    except valkey_errors.ResponseError:
        return {}
    facts = {
        "server": str(info.get("server_name", "redis")),
        "version": str(info.get("valkey_version", info.get("redis_version", ""))),
        "mode": str(info.get("server_mode", info.get("redis_mode", ""))),
    }
    return {name: value for name, value in facts.items() if value}


def _pairs(reply: object) -> dict[str, str]:
    """A flat ``[name, value, ...]`` reply (RESP2) or a map (RESP3) as text; nested values are skipped."""
    if isinstance(reply, Mapping):
        items: Sequence[tuple[object, object]] = list(reply.items())
    elif isinstance(reply, list | tuple):
        items = list(zip(reply[::2], reply[1::2], strict=False))
    else:
        return {}
    return {_text(name): _text(value) for name, value in items if isinstance(value, bytes | str | int)}


def _text(value: object) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


# The ACL ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProbeNames:
    """The key and channels the ACL is asked about: under the prefix, where the layer's own would be."""

    key: str
    channel: str
    #: A channel name that does not start with the prefix (None when every name does: an empty prefix).
    outside_channel: str | None

    @classmethod
    def for_layer(cls, layer: ValkeyChannelLayer | ValkeyPubSubChannelLayer) -> ProbeNames:
        """Names as ``layer`` makes them: its queue key for a made-up channel (a worker queue for the Pub/Sub
        layer, which an ACL may allow exactly; hash-tagged on a cluster) and a channel under its prefix."""
        token = f"__check__{secrets.token_hex(6)}"
        prefix = layer.prefix
        outside = None if token.startswith(prefix) else token
        return cls(key=layer.queue_key(token), channel=prefix + token, outside_channel=outside)

    def applies(self, need: Need) -> bool:
        """Whether ``need`` can be asked about with these names."""
        return need.names == "prefix" or self.outside_channel is not None


@dataclass(frozen=True)
class Verdict:
    """How one need of the layer fares under the ACL: the way the layer will take, and what was refused."""

    need: Need
    #: Index in ``need.ways`` of the first way allowed in full; None when none is.
    way: int | None
    #: Each refused command (as the report names it: "ZADD on key ..."), in the order found.
    refused: tuple[str, ...] = ()

    @property
    def level(self) -> Level:
        if self.way == 0:
            return "ok"
        if self.way is not None:
            return "warning"
        return self.need.severity

    def message(self) -> str:
        need = self.need
        refused = ", ".join(self.refused)
        if self.way == 0:
            return f"{need.use}: allowed"
        if self.way is not None:
            return (
                f"{need.use}: degraded, uses {_way(need.ways[self.way])} instead of {_way(need.ways[0])} "
                f"(the ACL refuses {refused})"
            )
        if need.severity == "error":
            return f"{need.use}: the ACL refuses {refused}, so the layer cannot do this"
        return f"{need.use}: the ACL refuses {refused}; {need.without}"


def _way(commands: Sequence[str]) -> str:
    return " + ".join(commands)


def probe_args(command: str, key: str, channel: str, client_id: int | None = None) -> tuple[Any, ...]:
    """``command`` in a form that changes nothing when ``key`` does not exist (and ``channel`` has no subscriber).

    ``client_id`` is this connection's own id for ``CLIENT UNBLOCK`` (a connection that is not blocked).
    """
    forms: dict[str, tuple[Any, ...]] = {
        "EVALSHA": ("EVALSHA", UNKNOWN_SHA, 1, key),
        "EVAL": ("EVAL", "return 0", 1, key),
        "ZADD": ("ZADD", key, "XX", 0, "-"),
        "ZRANGE": ("ZRANGE", key, 0, 0),
        "ZREMRANGEBYSCORE": ("ZREMRANGEBYSCORE", key, "-inf", "-inf"),
        "ZCOUNT": ("ZCOUNT", key, 0, 0),
        "ZCARD": ("ZCARD", key),
        "ZSCORE": ("ZSCORE", key, "-"),
        "ZREM": ("ZREM", key, "-"),
        "ZPOPMIN": ("ZPOPMIN", key),
        "BZMPOP": ("BZMPOP", PROBE_BLOCK, 1, key, "MIN"),
        "BZPOPMIN": ("BZPOPMIN", key, PROBE_BLOCK),
        "EXPIRE": ("EXPIRE", key, 60),
        "PEXPIRE": ("PEXPIRE", key, 60_000),
        "ZREMRANGEBYRANK": ("ZREMRANGEBYRANK", key, 1, 0),
        # The probe's own connection: it speaks RESP2 already and tracks nothing.
        "HELLO": ("HELLO", "2"),
        "CLIENT TRACKING": ("CLIENT", "TRACKING", "OFF"),
        "DEL": ("DEL", key),
        "SCAN": ("SCAN", 0, "MATCH", glob_escape(key), "COUNT", 1),
        "KEYS": ("KEYS", glob_escape(key)),
        "PUBLISH": ("PUBLISH", channel, ""),
        "SUBSCRIBE": ("SUBSCRIBE", channel),
        "UNSUBSCRIBE": ("UNSUBSCRIBE", channel),
        "SPUBLISH": ("SPUBLISH", channel, ""),
        "SSUBSCRIBE": ("SSUBSCRIBE", channel),
        "SUNSUBSCRIBE": ("SUNSUBSCRIBE", channel),
        "EXISTS": ("EXISTS", channel),
        "CLUSTER SLOTS": ("CLUSTER", "SLOTS"),
        # It only lets the next command reach a slot this node imports; the probes are harmless there too.
        "ASKING": ("ASKING",),
        "CLIENT ID": ("CLIENT", "ID"),
        # Without our own id, 0: no client has it.
        "CLIENT UNBLOCK": ("CLIENT", "UNBLOCK", client_id or 0),
        "PING": ("PING",),
    }
    if command not in forms:
        raise ValueError(f"no harmless form of {command!r} is known; add one to {__name__}.probe_args")
    return forms[command]


@dataclass
class AclChecker:
    """Finds out, command by command, whether the connected user may run what the layer sends (cached)."""

    client: avalkey.Valkey
    names: ProbeNames
    #: "dryrun" (``ACL DRYRUN`` for the connected user) or "probe" (harmless forms run for real).
    method: str = "probe"
    user: str | None = None
    _found: dict[tuple[str, Names], str | None] = field(default_factory=dict, init=False)
    _client_id: int | None = field(default=None, init=False)

    async def start(self) -> None:
        """Pick the method: ``ACL DRYRUN`` when this user may run it (and ``ACL WHOAMI`` to know who it is)."""
        try:
            user = _text(await self.client.execute_command("ACL", "WHOAMI"))
            await self.client.execute_command("ACL", "DRYRUN", user, "PING")
        except valkey_errors.ResponseError:
            self.method = "probe"
            return
        self.method, self.user = "dryrun", user

    async def verdicts(self, needs: Sequence[Need]) -> list[Verdict]:
        """One verdict per need, trying its ways in the layer's order of preference."""
        results = []
        for need in needs:
            if not self.names.applies(need):
                continue
            refused: list[str] = []
            chosen: int | None = None
            for index, way in enumerate(need.ways):
                refusals = [await self.refusal(command, need.names) for command in way]
                found = [refusal for refusal in refusals if refusal is not None]
                refused.extend(refusal for refusal in found if refusal not in refused)
                if not found:
                    chosen = index
                    break
            results.append(Verdict(need, chosen, tuple(refused)))
        return results

    async def refusal(self, command: str, names: Names = "prefix") -> str | None:
        """None when the user may run ``command`` on the probe names, else the refusal as the report words it."""
        if (command, names) not in self._found:
            channel = self.names.channel if names == "prefix" else self.names.outside_channel or ""
            if self.method == "dryrun":
                self._found[command, names] = await self._dry_run(command, channel)
            elif command in SUBSCRIBE_PAIRS:
                subscribe, unsubscribe = SUBSCRIBE_PAIRS[command]
                found = await self._subscribe_pair(subscribe, unsubscribe, channel)
                self._found[subscribe, names], self._found[unsubscribe, names] = found
            else:
                self._found[command, names] = await self._run(command, channel)
        return self._found[command, names]

    async def clean_up(self) -> None:
        """Delete the probe key in case anything made it exist (nothing should), where DEL is allowed."""
        if self.method == "probe" and self._found.get(("DEL", "prefix"), "unknown") is None:
            # A cluster node that does not serve the key's slot redirects: the probes there never reached it.
            with contextlib.suppress(valkey_errors.AskError):
                await self.client.execute_command("DEL", self.names.key)

    async def _dry_run(self, command: str, channel: str) -> str | None:
        args = probe_args(command, self.names.key, channel, self._client_id)
        try:
            reply = _text(await self.client.execute_command("ACL", "DRYRUN", self.user, *args))
        except valkey_errors.ResponseError as error:
            return self._word(command, str(error), channel)
        return None if reply == "OK" else self._word(command, reply, channel)

    async def _run(self, command: str, channel: str) -> str | None:
        try:
            reply = await self.client.execute_command(
                *probe_args(command, self.names.key, channel, self._client_id)
            )
        except valkey_errors.ResponseError as error:
            return self._judge_error(command, error, channel)
        if command == "CLIENT ID" and isinstance(reply, int):
            self._client_id = reply
        return None

    def _judge_error(self, command: str, error: valkey_errors.ResponseError, channel: str) -> str | None:
        """The refusal an error reply stands for, or None when the command got past the ACL.

        Past the ACL, other complaints do not matter (an unknown script, a ``MOVED`` to the node serving the
        slot), except a command the server does not have.
        """
        if isinstance(error, valkey_errors.NoPermissionError) or "unknown command" in str(error).lower():
            return self._word(command, str(error), channel)
        return None

    async def _subscribe_pair(
        self, subscribe: str, unsubscribe: str, channel: str
    ) -> tuple[str | None, str | None]:
        """``subscribe`` then ``unsubscribe`` on a connection of their own, which is closed afterwards."""
        pool = self.client.connection_pool
        connection = await pool.get_connection(subscribe)
        results: list[str | None] = []
        try:
            for command in (subscribe, unsubscribe):
                await connection.send_command(command, channel)
                try:
                    await connection.read_response()
                except valkey_errors.ResponseError as error:
                    results.append(self._judge_error(command, error, channel))
                else:
                    results.append(None)
        finally:
            # It may be left subscribed, so it is closed rather than reused.
            await connection.disconnect()
            await pool.release(connection)
        return results[0], results[1]

    def _word(self, command: str, reply: str, channel: str) -> str:
        """A refusal as the report names it: the command, and the key or channel when that was the problem."""
        text = reply.lower().rstrip(". ")
        if "unknown command" in text or "not found" in text:
            return f"{command} (unknown to this server)"
        if text.endswith(" key"):
            key = channel if command in CHANNEL_AS_KEY else self.names.key
            return f"{command} on key {key!r}"
        if text.endswith(" channel"):
            return f"{command} on channel {channel!r}"
        return command

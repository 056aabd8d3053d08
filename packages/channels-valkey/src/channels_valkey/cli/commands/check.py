"""``channels-valkey check``: can the configured layer work against its servers, and is anything at risk?

Per shard: reachable and how far (PING round trip), which server and version, its role (a replica refuses the
layer's writes), its ``maxmemory-policy`` (one that evicts can drop queued messages and groups), and whether the
connected user's ACL allows every command the layer sends, or only the fallbacks that leave it degraded. A Valkey
Cluster is checked primary by primary, each with the cluster's state as that node sees it.
Exit status: 1 for any error, 0 otherwise (warnings too, unless ``--strict``), 2 when the options or settings
are wrong.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from dataclasses import dataclass, field
from typing import Any

from valkey import exceptions as valkey_errors

from channels_valkey.cli.findings import Finding, Level, exit_status, summary
from channels_valkey.cli.output import render_json, render_table
from channels_valkey.cli.probes import AclChecker, ProbeNames, ServerFacts, Verdict, server_facts
from channels_valkey.cli.requirements import needs_of
from channels_valkey.cli.shards import ShardSlot, open_shards, primary_address
from channels_valkey.cli.targets import Target, TargetError, add_target_arguments, resolve_target

#: The oldest servers the layers work with (BZMPOP, ACL key and channel permissions, ...).
VALKEY_MINIMUM = (7, 2)
REDIS_MINIMUM = (7, 0)
#: A shard's whole check may take this many times ``--timeout`` (each wait is bounded by ``--timeout`` too).
SHARD_DEADLINE_FACTOR = 10
#: Refused commands named in the table's ACL column; the findings list them all.
ACL_COLUMN_COMMANDS = 4


@dataclass
class ShardCheck:
    """What was found on one shard."""

    index: int
    host: str
    reachable: str = "no"
    facts: ServerFacts | None = None
    service: str | None = None
    #: A shard of a cluster entry (``{"cluster": [...]}``): one of the primaries its slot map names.
    cluster: bool = False
    primary: str | None = None
    acl_method: str | None = None
    acl_user: str | None = None
    verdicts: list[Verdict] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)

    def add(self, level: Level, message: str) -> None:
        self.findings.append(Finding(level, message, self.index, self.host))

    @property
    def role(self) -> str:
        role = self.facts.role if self.facts else None
        if role is None:
            return "unknown"
        shown = "primary" if role == "master" else "replica" if role in ("replica", "slave") else role
        if self.service is not None:
            return f"{shown} (Sentinel {self.service!r}: {self.primary or 'address unknown'})"
        if self.cluster:
            return f"{shown} (cluster)"
        return shown

    @property
    def acl(self) -> str:
        if not self.verdicts:
            return "unknown"
        errors = [verdict for verdict in self.verdicts if verdict.level == "error"]
        if errors:
            # Only the command names: the findings below say which key or channel was refused.
            missing = list(
                dict.fromkeys(refused.split(" ")[0] for verdict in errors for refused in verdict.refused)
            )
            shown = ", ".join(missing[:ACL_COLUMN_COMMANDS])
            more = len(missing) - ACL_COLUMN_COMMANDS
            return f"missing: {shown}" + (f" and {more} more" if more > 0 else "")
        return "degraded" if any(verdict.level == "warning" for verdict in self.verdicts) else "ok"


# Judgements (pure, so each rule is easy to read and to test) ----------------------------------------------------


def judge_server(name: str | None, version: str | None) -> tuple[Level, str] | None:
    """Whether the layers work on server ``name`` at ``version``: None when they do, else a finding."""
    if not name or not version:
        return "warning", "the server did not say its name and version; the layers need Valkey 7.2 or newer"
    parsed = _version(version)
    if name == "valkey":
        if parsed >= VALKEY_MINIMUM:
            return None
        return "error", f"Valkey {version} is too old: the layers need Valkey 7.2 or newer"
    if name == "redis":
        if parsed >= REDIS_MINIMUM:
            return (
                "note",
                f"Redis {version} is compatible (Redis 7 or newer); the layers are tested on Valkey",
            )
        return (
            "error",
            f"Redis {version} is too old: the layers need Valkey 7.2 or newer (or Redis 7 or newer)",
        )
    return "warning", f"{name} {version} is neither Valkey nor Redis: the layers are not tested on it"


def judge_eviction(policy: str | None) -> tuple[Level, str] | None:
    """Whether ``maxmemory-policy`` may evict the layer's keys: queues and groups (all of which have a TTL)."""
    if policy is None or policy == "noeviction":
        return None
    if policy.startswith(("allkeys-", "volatile-")):
        scope = "any key" if policy.startswith("allkeys-") else "keys with a TTL, as all the layer's keys are"
        return (
            "warning",
            f"maxmemory-policy {policy} evicts {scope} when memory runs short: queued messages and group "
            "memberships can vanish without an error; noeviction makes sends fail loudly instead",
        )
    return "note", f"unfamiliar maxmemory-policy {policy!r}; noeviction keeps queued messages safe"


def _version(text: str) -> tuple[int, ...]:
    parts = []
    for piece in text.split("."):
        digits = "".join(char for char in piece if char.isdigit())
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


# Checking ---------------------------------------------------------------------------------------------------


async def check_shard(slot: ShardSlot, target: Target) -> ShardCheck:
    """Everything ``check`` finds on one shard; connection failures become findings, not exceptions."""
    result = ShardCheck(slot.index, slot.host, service=slot.service, cluster=slot.cluster is not None)
    if slot.problem is not None:
        if slot.login_refused:
            result.reachable = "login refused"
        result.add("error", slot.problem)
        return result
    try:
        client = await slot.client()
        result.facts = facts = await server_facts(client)
        result.reachable = "yes"
        result.primary = primary_address(client) if slot.service else None
        _judge_facts(result, facts, target)
        if facts.mode == "sentinel" or (facts.mode == "cluster" and not result.cluster):
            return result
        checker = AclChecker(client, ProbeNames.for_layer(target.instance))
        await checker.start()
        result.acl_method, result.acl_user = checker.method, checker.user
        needs = needs_of(target.layer, worker_queues=target.worker_queues, cluster=result.cluster)
        result.verdicts = await checker.verdicts(needs)
        await checker.clean_up()
    except valkey_errors.AuthenticationError as error:
        result.reachable = "login refused"
        result.add("error", f"the server refused the login: {error}")
    except (valkey_errors.ConnectionError, valkey_errors.TimeoutError, OSError) as error:
        if result.reachable == "yes":
            result.add("error", f"the connection failed during the check: {type(error).__name__}: {error}")
        else:
            result.add("error", f"unreachable: {type(error).__name__}: {error}")
    except valkey_errors.ValkeyError as error:
        result.add("error", f"the check failed: {type(error).__name__}: {error}")
    for verdict in result.verdicts:
        if verdict.level != "ok":
            result.add(verdict.level, verdict.message())
    return result


def _judge_facts(result: ShardCheck, facts: ServerFacts, target: Target) -> None:
    if facts.mode == "sentinel":
        result.add(
            "error",
            "this is a Sentinel, not a data server: list Sentinels in a Sentinel entry "
            "({'sentinels': [(host, port)], 'master_name': ...})",
        )
        return
    if facts.mode == "cluster" and not result.cluster:
        result.add(
            "error",
            "the server runs in cluster mode: as a plain hosts entry the layer would get MOVED for every key of "
            "another node's slots; write the cluster as one entry, "
            '{"cluster": ["valkey://HOST:PORT", ...]} (on the command line: --cluster URL ...)',
        )
        return
    verdict = judge_server(facts.name, facts.version)
    if verdict is not None:
        result.add(*verdict)
    if result.cluster and facts.cluster_state not in (None, "ok"):
        result.add(
            "error",
            f"cluster_state is {facts.cluster_state!r} (CLUSTER INFO): the cluster refuses commands until every "
            "slot is served again",
        )
    writes = target.layer == "core" or target.worker_queues
    if facts.role in ("replica", "slave"):
        if result.cluster:
            result.add(
                "error",
                "the cluster's slot map names this node a primary, but it reports role replica: a failover may "
                "be under way; check again",
            )
        elif result.service is not None:
            result.add(
                "error",
                f"the Sentinels name this node the primary of {result.service!r}, but it reports role replica: "
                "a failover may be under way; check again",
            )
        elif writes:
            result.add(
                "error", "the server is a replica: it refuses the layer's writes; point hosts at the primary"
            )
        else:
            result.add(
                "warning",
                "the server is a replica: Pub/Sub works there, but only among processes connected to it",
            )
    if facts.maxmemory_policy is None:
        if facts.policy_unknown_because is not None:
            result.add(
                "note",
                "maxmemory-policy unknown: the ACL refuses CONFIG GET; make sure it is noeviction "
                f"({facts.policy_unknown_because})",
            )
    elif writes:
        eviction = judge_eviction(facts.maxmemory_policy)
        if eviction is not None:
            result.add(*eviction)


async def _check_all(target: Target, timeout: float) -> list[ShardCheck]:
    async def bounded(slot: ShardSlot) -> ShardCheck:
        deadline = timeout * SHARD_DEADLINE_FACTOR
        try:
            return await asyncio.wait_for(check_shard(slot, target), deadline)
        except asyncio.TimeoutError:
            result = ShardCheck(slot.index, slot.host, service=slot.service)
            result.add("error", f"the check did not finish within {deadline:g} s")
            return result

    async with open_shards(target.specs, target.instance.policy) as slots:
        return list(await asyncio.gather(*(bounded(slot) for slot in slots)))


# Output -----------------------------------------------------------------------------------------------------


def _row(shard: ShardCheck) -> tuple[Any, ...]:
    facts = shard.facts
    latency = f"{facts.latency_ms:.2f} ms" if facts and facts.latency_ms is not None else None
    server = f"{facts.name} {facts.version}" if facts and facts.name else None
    policy = facts.maxmemory_policy if facts else None
    if facts and policy is None and facts.policy_unknown_because:
        policy = "unknown"
    return (
        shard.index,
        shard.host,
        shard.reachable,
        latency,
        server,
        shard.role if facts else None,
        policy,
        shard.acl,
    )


def _shard_json(shard: ShardCheck) -> dict[str, Any]:
    facts = shard.facts or ServerFacts()
    return {
        "index": shard.index,
        "host": shard.host,
        "reachable": shard.reachable == "yes",
        "login_refused": shard.reachable == "login refused",
        "latency_ms": None if facts.latency_ms is None else round(facts.latency_ms, 3),
        "server": facts.name,
        "version": facts.version,
        "mode": facts.mode,
        "role": None if shard.facts is None or facts.role is None else shard.role.split(" ")[0],
        "sentinel": {"service": shard.service, "primary": shard.primary} if shard.service else None,
        "cluster": {"state": facts.cluster_state} if shard.cluster else None,
        "maxmemory_policy": facts.maxmemory_policy,
        "acl": {
            "status": shard.acl,
            "method": shard.acl_method,
            "user": shard.acl_user,
            "needs": [
                {
                    "use": verdict.need.use,
                    "level": verdict.level,
                    "way": None if verdict.way is None else list(verdict.need.ways[verdict.way]),
                    "refused": list(verdict.refused),
                }
                for verdict in shard.verdicts
            ],
        },
    }


def _ordered(findings: list[Finding]) -> list[Finding]:
    rank = {"error": 0, "warning": 1, "note": 2}
    return sorted(findings, key=lambda finding: (rank[finding.level], finding.shard or 0))


def run(args: argparse.Namespace) -> int:
    """Check every shard of the target; print a table (or JSON) and the findings; return the exit status."""
    try:
        target = resolve_target(args)
    except TargetError as error:
        print(f"channels-valkey check: {error}", file=sys.stderr)
        return 2
    shards = asyncio.run(_check_all(target, args.timeout))
    findings = _ordered([finding for shard in shards for finding in shard.findings])
    status = exit_status(findings, strict=args.strict)
    if args.json:
        document = {
            "layer": target.layer,
            "prefix": target.prefix,
            "source": target.source,
            "shards": [_shard_json(shard) for shard in shards],
            "findings": [finding.as_json() for finding in findings],
            "status": status,
        }
        print(render_json(document))
        return status
    print(f"{target.layer} layer, prefix {target.prefix!r} ({target.source})")
    print()
    headers = ("shard", "host", "reachable", "latency", "server", "role", "maxmemory-policy", "ACL")
    print(render_table(headers, [_row(shard) for shard in shards]))
    print()
    for finding in findings:
        print(finding.line())
    plural = "s" if len(shards) != 1 else ""
    print(f"{len(shards)} shard{plural} checked: {summary(findings)} (exit status {status})")
    return status


def register(commands: Any) -> None:
    """Add ``check`` to the sub-commands."""
    parser = commands.add_parser(
        "check",
        help="check that the servers suit the configured layer (version, role, eviction, ACL)",
        description="Check each shard of a channel layer (each primary of a Valkey Cluster): reachable and "
        "latency, server and version, role, maxmemory-policy, and whether the ACL allows every command the layer "
        "uses. Exit status: 0 when the layer can work (warnings are printed), 1 when something is an error (or a "
        "warning, with --strict), 2 when the options or the settings are wrong.",
    )
    add_target_arguments(parser)
    parser.add_argument("--strict", action="store_true", help="exit with status 1 on warnings too")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.set_defaults(run=run)

"""Discovery of the primaries a ``services: []`` Sentinel entry stands for, by asking the Sentinels."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import valkey.asyncio
import valkey.exceptions

from channels_valkey.sentinel.exceptions import SentinelDiscoveryError
from channels_valkey.sentinel.specs import SentinelDiscovery, SentinelHost, host_port


async def discover_services(spec: SentinelDiscovery, *, timeout: float = 5.0) -> list[SentinelHost]:
    """Ask the Sentinels which primaries they monitor: one :class:`SentinelHost` each, sorted by name.

    Sorting makes every process build the same ring from the same Sentinels. Each Sentinel is asked in turn
    until one names at least one primary; ``timeout`` bounds each connect and reply unless
    ``sentinel_options`` set their own socket timeouts. Raises :class:`SentinelDiscoveryError` when none
    answers or none monitors anything.
    """
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
        raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
    client_options = {"socket_connect_timeout": timeout, "socket_timeout": timeout, **spec.sentinel_options}
    failures: list[str] = []
    for host, port in spec.sentinels:
        client = valkey.asyncio.Valkey(host=host, port=port, **client_options)
        try:
            masters = await client.sentinel_masters()
        except (valkey.exceptions.ValkeyError, OSError) as exc:
            failures.append(f"{host_port(host, port)}: {type(exc).__name__}: {exc}")
            continue
        finally:
            await client.aclose()
        names = _monitored_names(masters)
        if names:
            return [
                SentinelHost(spec.sentinels, name, spec.sentinel_options, spec.options)
                for name in sorted(names)
            ]
        failures.append(f"{host_port(host, port)}: monitors no primary")
    raise SentinelDiscoveryError(
        f"no Sentinel named a primary for {spec.describe()}: {'; '.join(failures)}. Check that the Sentinels "
        "run, that 'sentinel_kwargs' holds their password, and that they monitor at least one primary."
    )


def _monitored_names(masters: object) -> set[str]:
    """Primary names from a SENTINEL MASTERS reply: a dict by name (RESP2) or a list of states (RESP3)."""
    if isinstance(masters, Mapping):
        raw: Iterable[object] = masters.keys()
    elif isinstance(masters, list):
        raw = [state.get("name") for state in masters if isinstance(state, Mapping)]
    else:
        return set()
    return {name.decode() if isinstance(name, bytes) else str(name) for name in raw if name}

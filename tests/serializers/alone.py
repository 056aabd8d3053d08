"""Run by ``hatch run serializers:test`` before pytest: proves that environment holds this distribution alone.

Exits non-zero, naming them, if any of Channels, Django, valkey or the peers can be imported there.
"""

from __future__ import annotations

import importlib.util
import sys

MUST_BE_ABSENT = ("channels", "django", "asgiref", "valkey", "redis", "channels_redis")

present = [name for name in MUST_BE_ABSENT if importlib.util.find_spec(name) is not None]
if present:
    sys.exit(f"the serializers-only environment must not have {', '.join(present)} installed")
if importlib.util.find_spec("channels_valkey.serializers") is None:
    sys.exit("channels_valkey.serializers is not installed in the serializers-only environment")
print(f"serializers-only environment: none of {', '.join(MUST_BE_ABSENT)} is importable")

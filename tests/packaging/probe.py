"""Report, as JSON on stdout, what a fresh virtual environment holds and what imports in it.

The packaging tests cannot look inside a virtual environment they do not run in, so they run this script with
that environment's interpreter (``python -I probe.py REQUEST``) and assert on the report. It uses the standard
library only, because the environment holds nothing but what the wheels under test brought.

REQUEST is a JSON object with two lists of dotted module names: ``find`` (looked up without being imported, so a
missing parent counts as absent) and ``import`` (imported, in order, in this one process).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import json
import re
import sys
import sysconfig
from pathlib import Path
from typing import Any

NAMESPACE = "channels_valkey"


def canonical(name: str) -> str:
    """A distribution name as PEP 503 compares it."""
    return re.sub(r"[-_.]+", "-", name).lower()


def found(name: str) -> bool:
    """Whether ``name`` could be imported here, without importing it."""
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


def imported(name: str) -> dict[str, Any]:
    """Import ``name`` and say where it came from, or why it failed."""
    try:
        module = importlib.import_module(name)
    except Exception as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}
    return {
        "error": None,
        "file": getattr(module, "__file__", None),
        "version": getattr(module, "__version__", None),
    }


def namespace_files(portions: list[str]) -> list[str]:
    """Every file on disk under the namespace's portions, relative to the portion's parent, bytecode aside."""
    files = []
    for portion in portions:
        root = Path(portion)
        for path in root.rglob("*"):
            if path.is_file() and "__pycache__" not in path.parts:
                files.append(path.relative_to(root.parent).as_posix())
    return sorted(files)


def namespace() -> dict[str, Any] | None:
    """How the ``channels_valkey`` namespace package resolved, or None when it is not importable at all."""
    try:
        package = importlib.import_module(NAMESPACE)
    except ImportError:
        return None
    portions = list(package.__path__)
    owners = importlib.metadata.packages_distributions().get(NAMESPACE, [])
    return {
        "file": getattr(package, "__file__", None),
        "path": portions,
        "owners": sorted({canonical(owner) for owner in owners}),
        "files": namespace_files(portions),
    }


def distributions() -> dict[str, dict[str, Any]]:
    """Each installed distribution: its version and, for ours, the files it installed in the namespace."""
    report: dict[str, dict[str, Any]] = {}
    for dist in importlib.metadata.distributions():
        files = [
            path.as_posix()
            for path in dist.files or []
            if path.parts[0] == NAMESPACE and "__pycache__" not in path.parts
        ]
        report[canonical(dist.metadata["Name"])] = {"version": dist.version, "files": sorted(files)}
    return report


def main() -> None:
    request = json.loads(sys.argv[1])
    report = {
        "prefix": sys.prefix,
        "purelib": sysconfig.get_paths()["purelib"],
        "distributions": distributions(),
        "found": {name: found(name) for name in request.get("find", [])},
        "imported": {name: imported(name) for name in request.get("import", [])},
        "namespace": namespace(),
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()

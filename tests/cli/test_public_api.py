"""The command line tool, the chat demo and the benchmarks use the packages through their public API only.

Public is what a package's ``__init__`` exports, under a name without a leading underscore, and the top-level
module of a distribution (``channels_valkey.utils``). A module below a package (``channels_valkey.pubsub.names``)
is that package's own business and may change in any release; a tool importing it would break with it, unnoticed
until then. Inside the tool, ``channels_valkey.cli`` modules import each other freely: they are one program. The
imports are read with ``ast`` (dynamic ones too: ``importlib.import_module("...")``), so nothing is run.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import types
from collections.abc import Iterator
from pathlib import Path

import pytest

import channels_valkey.cli
from channels_valkey.cli.targets import BACKENDS, LAYERS

REPO = Path(__file__).resolve().parents[2]
CLI = REPO / "packages" / "channels-valkey" / "src" / "channels_valkey" / "cli"
FOLDERS = {"cli": CLI, "examples": REPO / "examples", "benchmarks": REPO / "benchmarks"}
OURS = "channels_valkey"
#: The public, documented API of named tuples (``urlsplit(...)._replace``): underscored only to stay out of the
#: way of field names.
NAMED_TUPLE_API = {"_replace", "_asdict", "_fields", "_make"}


def _files(folder: Path) -> list[Path]:
    return sorted(path for path in folder.rglob("*.py") if "__pycache__" not in path.parts)


def _module_of(path: Path) -> str | None:
    """The dotted name of a file of the tool (``channels_valkey.cli.commands.serve``); None outside it."""
    if not path.is_relative_to(CLI):
        return None
    parts = [OURS, "cli", *path.relative_to(CLI).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_package(module: str) -> bool:
    spec = importlib.util.find_spec(module)
    return spec is not None and spec.submodule_search_locations is not None


def _why_private(module: str) -> str | None:
    """Why importing the module ``module`` of ours reaches past the public API; None when it does not."""
    parts = module.split(".")
    if any(part.startswith("_") for part in parts):
        return "a module whose name starts with '_'"
    if len(parts) <= 2 or _is_package(module):
        return None  # the namespace, a distribution's package, or its top-level module
    return "a module below a package: import what the package's __init__ exports"


def _imports(tree: ast.AST, importer: str | None) -> Iterator[tuple[int, str, list[str]]]:
    """(line, module, names imported from it) of each import; ``importer`` resolves relative imports in the tool."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name, []
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                if importer is None:
                    continue  # the demo's or the benchmarks' own modules
                base = importer if _is_package(importer) else importer.rpartition(".")[0]
                module = importlib.util.resolve_name("." * node.level + (node.module or ""), base)
            else:
                module = node.module or ""
            yield node.lineno, module, [alias.name for alias in node.names]
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute | ast.Name)
            and (node.func.attr if isinstance(node.func, ast.Attribute) else node.func.id) == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            yield node.lineno, node.args[0].value, []


def _submodule(package: types.ModuleType, name: str) -> str | None:
    """The module ``from package import name`` brings in, or None when it brings in something else."""
    value = getattr(package, name, None)
    if isinstance(value, types.ModuleType):
        return value.__name__
    if value is None and hasattr(package, "__path__"):
        candidate = f"{package.__name__}.{name}"
        return candidate if importlib.util.find_spec(candidate) is not None else None
    return None


def reach_ins(source: str, importer: str | None = None) -> list[str]:
    """How ``source`` imports past the public API of our packages, one line each; ``importer`` is its module name
    when it is a module of the tool (whose own modules it may import)."""
    found: list[str] = []
    for line, module, names in _imports(ast.parse(source), importer):
        if module != OURS and not module.startswith(OURS + "."):
            continue
        if importer is not None and (module == f"{OURS}.cli" or module.startswith(f"{OURS}.cli.")):
            continue
        why = _why_private(module)
        if why is not None:
            found.append(f"line {line}: {module} is {why}")
            continue
        package = importlib.import_module(module)
        for name in names:
            submodule = _submodule(package, name)
            if submodule is not None:
                why = _why_private(submodule)
                if why is not None:
                    found.append(f"line {line}: {submodule} (from {module} import {name}) is {why}")
            elif name.startswith("_") and not (name.startswith("__") and name.endswith("__")):
                found.append(f"line {line}: {module}.{name} is private (its name starts with '_')")
    return found


def private_attributes(source: str) -> list[str]:
    """Underscored attributes ``source`` reads on objects other than ``self`` and ``cls`` (a layer's, a
    connection's ...), one line each; named tuples' ``_replace`` and friends are public and allowed."""
    found: list[str] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute):
            name = node.attr
            owner = node.value.id if isinstance(node.value, ast.Name) else None
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ("getattr", "setattr", "hasattr")
            and len(node.args) >= 2
            and isinstance(node.args[1], ast.Constant)
            and isinstance(node.args[1].value, str)
        ):
            name = node.args[1].value
            owner = node.args[0].id if isinstance(node.args[0], ast.Name) else None
        else:
            continue
        if not name.startswith("_") or (name.startswith("__") and name.endswith("__")):
            continue
        if owner in ("self", "cls") or name in NAMED_TUPLE_API:
            continue
        found.append(f"line {node.lineno}: .{name} of {owner or 'an expression'}")
    return found


@pytest.mark.parametrize("folder", sorted(FOLDERS))
def test_no_private_module_of_another_package_is_imported(folder: str) -> None:
    problems = [
        f"{path.relative_to(REPO)} {problem}"
        for path in _files(FOLDERS[folder])
        for problem in reach_ins(path.read_text(), _module_of(path))
    ]
    assert problems == [], "\n".join(problems)


@pytest.mark.parametrize("folder", sorted(FOLDERS))
def test_no_private_attribute_of_another_object_is_read(folder: str) -> None:
    problems = [
        f"{path.relative_to(REPO)} {problem}"
        for path in _files(FOLDERS[folder])
        for problem in private_attributes(path.read_text())
    ]
    assert problems == [], "\n".join(problems)


def test_the_checks_catch_what_they_are_for() -> None:
    """The checks above pass only if they can fail: each kind of reach-in they exist for is caught."""
    assert reach_ins("from channels_valkey.pubsub.names import group_channel")
    assert reach_ins("import channels_valkey.core.layer")
    assert reach_ins("from channels_valkey.cli.embedded import embedded_valkey")  # the demo's way in, once
    assert reach_ins("from channels_valkey.utils import _consistent_hash")
    assert reach_ins("from channels_valkey.core import __about__")
    assert reach_ins("import importlib\nimportlib.import_module('channels_valkey.pubsub.names')")
    assert reach_ins("from channels_valkey.pubsub import names")
    assert reach_ins("from ..core import layer", importer="channels_valkey.cli.inventory")
    assert private_attributes("layer._connections")
    assert private_attributes("getattr(layer, '_serializer')")

    assert not reach_ins("from channels_valkey.core import ValkeyChannelLayer, __version__")
    assert not reach_ins(
        "from channels_valkey import serializers\nfrom channels_valkey.utils import decode_hosts"
    )
    assert not reach_ins("from channels_valkey.cli import embedded_valkey")
    assert not reach_ins("from channels_valkey.cli.measure import GROUP, MESSAGE")
    serve = "channels_valkey.cli.commands.serve"
    assert not reach_ins("from channels_valkey.cli.embedded import embedded_valkey", importer=serve)
    assert not private_attributes("self._lock\nparts._replace(netloc='x')")


def test_the_demo_and_the_benchmarks_keep_no_copy_of_the_tools_helpers() -> None:
    """What ``channels_valkey.cli`` exports is imported, not defined again under the same name (or with a leading
    underscore), as ``is_loopback`` once was in the demo."""
    shared = set(channels_valkey.cli.__all__)
    copies = [
        f"{path.relative_to(REPO)} line {node.lineno}: {node.name}"
        for folder in ("examples", "benchmarks")
        for path in _files(FOLDERS[folder])
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.FunctionDef | ast.ClassDef) and node.name.lstrip("_") in shared
    ]
    assert copies == [], "\n".join(copies)


def test_the_backends_named_in_messages_are_the_public_paths_of_the_layers() -> None:
    assert BACKENDS.keys() == LAYERS.keys()
    for name, backend in BACKENDS.items():
        module, _, class_name = backend.rpartition(".")
        assert _why_private(module) is None, backend
        assert getattr(importlib.import_module(module), class_name) is LAYERS[name], backend

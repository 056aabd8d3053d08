"""docs/architecture.md names every module of the five distributions in its module map, and only modules that exist.

A change that adds, removes or renames a module under ``packages/*/src/channels_valkey/`` fails here until the map
says so. The map is a table row per module, the first cell its path below ``channels_valkey/`` in backticks
(``| `core/layer.py` | ... |``); ``__init__.py`` and ``__about__.py`` are left out of it.
"""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOCUMENT = REPO / "docs" / "architecture.md"
SECTION = "## Module map"
LEFT_OUT = frozenset({"__init__.py", "__about__.py"})
#: A table row of the map: its first cell names one module, such as `core/layer.py` or `cli/commands/check.py`.
ROW = re.compile(r"^\|\s*`([^`]+\.py)`\s*\|", re.MULTILINE)


def module_map() -> list[str]:
    """The modules the rows of the module map section name, in order."""
    lines = DOCUMENT.read_text(encoding="utf-8").splitlines()
    starts = [index for index, line in enumerate(lines) if line.strip() == SECTION]
    assert len(starts) == 1, f"{DOCUMENT} must have exactly one {SECTION!r} heading, found {len(starts)}"
    section: list[str] = []
    for line in lines[starts[0] + 1 :]:
        if line.startswith("## "):
            break
        section.append(line)
    return ROW.findall("\n".join(section))


def modules_on_disk() -> set[str]:
    """Every module of every distribution, as a path below ``channels_valkey/``."""
    found: set[str] = set()
    for namespace in sorted(REPO.glob("packages/*/src/channels_valkey")):
        for path in namespace.rglob("*.py"):
            if path.name not in LEFT_OUT:
                found.add(path.relative_to(namespace).as_posix())
    return found


def test_the_modules_exist_to_compare() -> None:
    assert len(modules_on_disk()) > 40, "no modules found: is the repository layout still packages/*/src/?"


def test_every_module_is_in_the_map() -> None:
    missing = sorted(modules_on_disk() - set(module_map()))
    assert not missing, f"modules missing from the module map of {DOCUMENT.name}: {missing}"


def test_every_module_in_the_map_exists() -> None:
    gone = sorted(set(module_map()) - modules_on_disk())
    assert not gone, f"the module map of {DOCUMENT.name} names modules that do not exist: {gone}"


def test_each_module_has_one_row() -> None:
    named = module_map()
    twice = sorted({name for name in named if named.count(name) > 1})
    assert not twice, f"the module map of {DOCUMENT.name} lists these modules more than once: {twice}"

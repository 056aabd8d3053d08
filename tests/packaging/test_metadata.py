"""What ``hatch build`` puts in each wheel and sdist: the files, and metadata that says what pyproject.toml says.

The requirements are compared with pyproject.toml rather than with a second copy kept here; what is written out
below are the rules of the house (docs/architecture.md) those requirements must follow. Slow because the session
builds all ten files first.
"""

from __future__ import annotations

import configparser
from typing import Any

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

pytestmark = pytest.mark.slow

NAMESPACE = "channels_valkey"
SIBLINGS = (
    "channels-valkey-serializers",
    "channels-valkey-sentinel",
    "channels-valkey-core",
    "channels-valkey-pubsub",
)
META = "channels-valkey"
#: Packages the meta-package ships beside its module, each needing one of its extras: the Django app of the
#: django-health-check plugin (extra ``health``).
META_EXTRA_PACKAGES = ("health_check",)


def comparable(requirement: Requirement) -> tuple[str, frozenset[str], str, str]:
    """A requirement reduced to what it means, so that spelling and quoting differences compare equal."""
    extras = frozenset(canonicalize_name(extra) for extra in requirement.extras)
    marker = str(requirement.marker) if requirement.marker else ""
    return canonicalize_name(requirement.name), extras, str(requirement.specifier), marker


def declared_requirements(project: dict[str, Any]) -> set[tuple[str, frozenset[str], str, str]]:
    """The requirements pyproject.toml declares, with each extra's requirements marked as the wheel marks them."""
    declared = {comparable(Requirement(text)) for text in project.get("dependencies", [])}
    for extra, texts in project.get("optional-dependencies", {}).items():
        for text in texts:
            requirement = Requirement(text)
            condition = f'extra == "{extra}"'
            if requirement.marker:
                condition = f"({requirement.marker}) and {condition}"
            requirement.marker = None
            declared.add(comparable(Requirement(f"{requirement}; {condition}")))
    return declared


def unconditional(distribution) -> list[Requirement]:
    """The wheel's requirements that apply without any extra."""
    texts = distribution.wheel_metadata().get_all("Requires-Dist") or []
    return [requirement for requirement in map(Requirement, texts) if not requirement.marker]


def for_extra(distribution, extra: str) -> list[Requirement]:
    """The wheel's requirements that only apply with ``extra``."""
    texts = distribution.wheel_metadata().get_all("Requires-Dist") or []
    return [
        requirement
        for requirement in map(Requirement, texts)
        if requirement.marker
        and requirement.marker.evaluate({"extra": extra})
        and not requirement.marker.evaluate({"extra": ""})
    ]


def misplaced(files: set[str], distribution, build) -> list[str]:
    """Files that do not belong to this distribution's module under the namespace.

    The meta-package may also ship single-file compatibility modules at the top of the namespace
    (``channels_valkey/utils.py``), as long as none is the namespace's ``__init__.py`` or shadows a sibling's module,
    and the packages of :data:`META_EXTRA_PACKAGES`.
    """
    module = distribution.module
    taken = {sibling.module for sibling in build.distributions.values()}
    wrong = []
    for path in sorted(files):
        parts = path.split("/")
        if parts[:2] == [NAMESPACE, module] and len(parts) > 2:
            continue
        if distribution.name == META and len(parts) > 2 and parts[1] in META_EXTRA_PACKAGES:
            continue
        is_compat_module = (
            distribution.name == META
            and len(parts) == 2
            and parts[0] == NAMESPACE
            and parts[1].endswith(".py")
            and parts[1] != "__init__.py"
            and parts[1].removesuffix(".py") not in taken
        )
        if not is_compat_module:
            wrong.append(path)
    return wrong


def test_version_and_wheel_sources_come_from_its_own_module(distribution) -> None:
    assert distribution.project["name"] == distribution.name
    version_path = distribution.pyproject["tool"]["hatch"]["version"]["path"]
    assert version_path == f"src/{NAMESPACE}/{distribution.module}/__about__.py"
    wheel_target = distribution.pyproject["tool"]["hatch"]["build"]["targets"]["wheel"]
    assert wheel_target["packages"] == [f"src/{NAMESPACE}"]


def test_file_names_carry_name_version_and_a_pure_python_tag(distribution) -> None:
    stem = canonicalize_name(distribution.name).replace("-", "_")
    assert distribution.wheel.name == f"{stem}-{distribution.version}-py3-none-any.whl"
    assert distribution.sdist.name == f"{stem}-{distribution.version}.tar.gz"


def test_wheel_ships_exactly_its_module_and_no_namespace_init(build, distribution) -> None:
    files = distribution.wheel_files()
    module = f"{NAMESPACE}/{distribution.module}"
    assert f"{NAMESPACE}/__init__.py" not in files
    assert misplaced(files, distribution, build) == []
    assert {f"{module}/__init__.py", f"{module}/__about__.py", f"{module}/py.typed"} <= files
    assert {path for path in files if path.startswith(f"{module}/")} == distribution.sources


def test_no_two_wheels_ship_the_same_file(build) -> None:
    owners: dict[str, list[str]] = {}
    for distribution in build.distributions.values():
        for path in distribution.wheel_files():
            owners.setdefault(path, []).append(distribution.name)
    assert {path: names for path, names in owners.items() if len(names) > 1} == {}


def test_sdist_ships_sources_readme_changelog_and_no_namespace_init(build, distribution) -> None:
    files = distribution.sdist_files()
    module = f"src/{NAMESPACE}/{distribution.module}"
    assert {"PKG-INFO", "pyproject.toml", "README.md", "CHANGELOG.md", f"{module}/py.typed"} <= files
    assert f"src/{NAMESPACE}/__init__.py" not in files
    sources = {path.removeprefix("src/") for path in files if path.startswith("src/")}
    assert misplaced(sources, distribution, build) == []
    assert sources == distribution.wheel_files()
    pkg_info = distribution.sdist_metadata()
    assert (pkg_info["Name"], pkg_info["Version"]) == (distribution.name, distribution.version)


def test_wheel_metadata_says_what_pyproject_says(distribution) -> None:
    metadata = distribution.wheel_metadata()
    project = distribution.project
    assert metadata["Name"] == distribution.name
    assert metadata["Version"] == distribution.version
    assert metadata["Summary"] == project["description"]
    assert metadata["License-Expression"] == project["license"]
    assert metadata["Requires-Python"] == project["requires-python"]
    extras = project.get("optional-dependencies", {})
    assert sorted(metadata.get_all("Provides-Extra") or []) == sorted(extras)
    requires = {comparable(Requirement(text)) for text in metadata.get_all("Requires-Dist") or []}
    assert requires == declared_requirements(project)
    assert set(metadata.get_all("Classifier") or []) == set(project["classifiers"])
    assert "Typing :: Typed" in project["classifiers"]


def test_readme_is_the_long_description(distribution) -> None:
    # The README as the sdist carries it, not as it is on disk now: both files were built from the same state.
    assert distribution.project["readme"] == "README.md"
    readme = distribution.sdist_text("README.md")
    metadata = distribution.wheel_metadata()
    assert readme
    assert metadata["Description-Content-Type"] == "text/markdown"
    assert metadata.get_payload() == readme
    assert distribution.sdist_metadata().get_payload() == readme


def test_console_scripts_are_the_declared_ones_and_live_in_the_own_module(distribution) -> None:
    entry_points = configparser.ConfigParser(delimiters=("=",))
    entry_points.optionxform = str  # script names are case-sensitive; ConfigParser lowercases keys by default
    entry_points.read_string(distribution.wheel_text("entry_points.txt") or "")
    scripts = dict(entry_points["console_scripts"]) if entry_points.has_section("console_scripts") else {}
    assert scripts == distribution.project.get("scripts", {})
    for target in scripts.values():
        assert target.startswith(f"{NAMESPACE}.{distribution.module}.")
    if distribution.name == META:
        assert scripts["channels-valkey"] == f"{NAMESPACE}.cli.main:main"


def test_python_3_10_and_newer_are_supported(distribution) -> None:
    supported = SpecifierSet(distribution.wheel_metadata()["Requires-Python"])
    assert [version for version in ("3.9", "3.10", "3.11", "3.12", "3.13") if version in supported] == [
        "3.10",
        "3.11",
        "3.12",
        "3.13",
    ]


def test_sibling_requirements_have_a_floor_met_here_and_a_major_cap(build) -> None:
    siblings = [
        (distribution.name, requirement)
        for distribution in build.distributions.values()
        for requirement in map(Requirement, distribution.wheel_metadata().get_all("Requires-Dist") or [])
        if canonicalize_name(requirement.name) in SIBLINGS
    ]
    assert siblings, "core, pubsub and the meta-package require their siblings"
    for name, requirement in siblings:
        operators = sorted(spec.operator for spec in requirement.specifier)
        assert operators == ["<", ">="], f"{name}: {requirement}"
        caps = {spec.version for spec in requirement.specifier if spec.operator == "<"}
        assert caps == {"2"}, f"{name}: {requirement}"
        assert build[requirement.name].version in requirement.specifier, (
            f"{name}: {requirement} rejects the {build[requirement.name].version} built from this checkout"
        )


@pytest.mark.parametrize(
    ("leaf", "also_forbidden"),
    [("channels-valkey-serializers", {"valkey"}), ("channels-valkey-sentinel", set())],
)
def test_leaves_require_nothing_of_ours_nor_django_or_channels(
    build, leaf: str, also_forbidden: set[str]
) -> None:
    required = {canonicalize_name(requirement.name) for requirement in unconditional(build[leaf])}
    assert required.isdisjoint({*SIBLINGS, META, "channels", "django", "asgiref", *also_forbidden})


@pytest.mark.parametrize(("layer", "other"), [("core", "pubsub"), ("pubsub", "core")])
def test_one_layer_does_not_require_the_other(build, layer: str, other: str) -> None:
    requirements = build[f"channels-valkey-{layer}"].wheel_metadata().get_all("Requires-Dist") or []
    assert all(Requirement(text).name != f"channels-valkey-{other}" for text in requirements)
    required = {r.name for r in unconditional(build[f"channels-valkey-{layer}"])}
    assert {"channels-valkey-serializers", "channels-valkey-sentinel"} <= required


def test_meta_package_requires_all_four(build) -> None:
    assert {requirement.name for requirement in unconditional(build[META])} == set(SIBLINGS)


def test_cryptography_extra_passes_through_to_the_serializers(build) -> None:
    passed = for_extra(build[META], "cryptography")
    assert [(r.name, r.extras) for r in passed] == [("channels-valkey-serializers", {"cryptography"})]
    brought = for_extra(build["channels-valkey-serializers"], "cryptography")
    assert [r.name for r in brought] == ["cryptography"]

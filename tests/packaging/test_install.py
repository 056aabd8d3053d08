"""Each built wheel installed alone in a fresh virtual environment: what it brings, what it leaves out, what imports.

Sibling requirements resolve to the wheels built from this checkout (``--find-links``, versions pinned), never to
channels-valkey 0.3 on PyPI; third-party requirements come from PyPI. Slow: every test makes a virtual
environment and installs into it (the pip cache keeps repeat runs to seconds).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.slow

NAMESPACE = "channels_valkey"
META = "channels-valkey"
ALL_FIVE = (
    "channels-valkey-serializers",
    "channels-valkey-sentinel",
    "channels-valkey-core",
    "channels-valkey-pubsub",
    META,
)


def ours(report: dict[str, Any]) -> dict[str, str]:
    """The installed distributions of ours, by name, with their versions."""
    return {name: dist["version"] for name, dist in report["distributions"].items() if name in ALL_FIVE}


def modules_of(build, names) -> tuple[str, ...]:
    """The dotted module each named distribution ships."""
    return tuple(f"{NAMESPACE}.{build[name].module}" for name in names)


def built_versions(build, names) -> dict[str, str]:
    """The versions this checkout builds for ``names``."""
    return {name: build[name].version for name in names}


def assert_imported_from_the_venv(report: dict[str, Any], build, names) -> None:
    """Each distribution's module imported from this environment's site-packages, at the version built here."""
    purelib = Path(report["purelib"]).resolve()
    for name in names:
        module = f"{NAMESPACE}.{build[name].module}"
        result = report["imported"][module]
        assert result["error"] is None, f"import {module}: {result['error']}"
        assert Path(result["file"]).resolve() == purelib / NAMESPACE / build[name].module / "__init__.py"
        if result["version"] is not None:
            assert result["version"] == build[name].version


#: What installing each layer's wheel alone must bring along, what must import, and what must stay absent.
ALONE = {
    "channels-valkey-serializers": {
        "brings": ("channels-valkey-serializers",),
        "present": ("msgpack",),
        "absent": ("channels", "django", "valkey", "asgiref", "cryptography", "channels_valkey.sentinel"),
    },
    "channels-valkey-sentinel": {
        "brings": ("channels-valkey-sentinel",),
        "present": ("valkey",),
        "absent": ("channels", "django", "asgiref", "channels_valkey.serializers", "channels_valkey.core"),
    },
    "channels-valkey-core": {
        "brings": ("channels-valkey-serializers", "channels-valkey-sentinel", "channels-valkey-core"),
        "present": ("channels", "django", "asgiref", "valkey", "msgpack"),
        "absent": ("channels_valkey.pubsub", "channels_valkey.cli", "cryptography"),
    },
    "channels-valkey-pubsub": {
        "brings": ("channels-valkey-serializers", "channels-valkey-sentinel", "channels-valkey-pubsub"),
        "present": ("channels", "django", "asgiref", "valkey", "msgpack"),
        "absent": ("channels_valkey.core", "channels_valkey.cli", "cryptography"),
    },
}


@pytest.mark.parametrize("name", list(ALONE))
def test_wheel_alone_brings_only_what_it_needs(fresh_venv, build, name: str) -> None:
    expected = ALONE[name]
    fresh_venv.install_wheel(name)
    report = fresh_venv.probe(
        find=(*expected["present"], *expected["absent"]),
        imports=modules_of(build, expected["brings"]),
    )

    assert ours(report) == built_versions(build, expected["brings"])
    missing = [module for module in expected["present"] if not report["found"][module]]
    unwanted = [module for module in expected["absent"] if report["found"][module]]
    assert (missing, unwanted) == ([], [])
    assert_imported_from_the_venv(report, build, expected["brings"])
    assert report["namespace"]["file"] is None, "channels_valkey must stay a namespace package"


def test_meta_package_brings_all_four_merges_the_namespace_and_runs_its_command(fresh_venv, build) -> None:
    fresh_venv.install_wheel(META)
    report = fresh_venv.probe(find=("cryptography",), imports=modules_of(build, ALL_FIVE))

    assert ours(report) == built_versions(build, ALL_FIVE)
    assert_imported_from_the_venv(report, build, ALL_FIVE)
    assert report["found"]["cryptography"] is False, "cryptography is an extra, not a requirement"

    namespace = report["namespace"]
    purelib = Path(report["purelib"]).resolve()
    assert namespace["file"] is None
    assert [Path(portion).resolve() for portion in namespace["path"]] == [purelib / NAMESPACE]
    assert namespace["owners"] == sorted(ALL_FIVE)
    installed = set().union(*(build[name].wheel_files() for name in ALL_FIVE))
    assert set(namespace["files"]) == installed
    for name in ALL_FIVE:
        assert set(report["distributions"][name]["files"]) == build[name].wheel_files()

    listed = fresh_venv.run("channels-valkey", "versions")
    assert listed.returncode == 0, listed.stdout + listed.stderr
    rows = [line.split() for line in listed.stdout.splitlines()]
    assert rows == [[name, build[name].version] for name in ALL_FIVE]

    version = fresh_venv.run("channels-valkey", "--version")
    assert (version.returncode, version.stdout.strip()) == (0, f"channels-valkey {build[META].version}")


def test_meta_cryptography_extra_brings_cryptography(fresh_venv, build) -> None:
    fresh_venv.install_wheel(META, extras="cryptography")
    report = fresh_venv.probe(imports=("cryptography.fernet", f"{NAMESPACE}.serializers"))

    assert ours(report) == built_versions(build, ALL_FIVE)
    assert report["imported"]["cryptography.fernet"]["error"] is None
    assert "cryptography" in report["distributions"]
    assert_imported_from_the_venv(report, build, ["channels-valkey-serializers"])


def test_sdists_build_wheels_that_install(fresh_venv, build) -> None:
    """pip builds each sdist with hatchling (no wheels offered), and the result installs what the wheel does."""
    fresh_venv.pip_install(*(build[name].sdist for name in ALL_FIVE))
    report = fresh_venv.probe(imports=modules_of(build, ALL_FIVE))

    assert ours(report) == built_versions(build, ALL_FIVE)
    assert_imported_from_the_venv(report, build, ALL_FIVE)
    for name in ALL_FIVE:
        assert set(report["distributions"][name]["files"]) == build[name].wheel_files()
    listed = fresh_venv.run("channels-valkey", "versions")
    assert listed.returncode == 0, listed.stdout + listed.stderr

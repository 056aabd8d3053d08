"""Fixtures that build every distribution with ``hatch build`` and install the results in fresh virtual environments.

The development environment installs the five distributions editable from one checkout, where the namespace
merges by itself and every sibling is always present. These fixtures look at what a user gets instead: the built
wheels and sdists, installed without the checkout on the path, each scenario in a virtual environment of its own.

This folder must never get an ``__init__.py``: ``tests/`` is on ``sys.path`` (root pytest config), and a regular
package named ``packaging`` there would shadow the ``packaging`` library that pytest and these tests import.
"""

from __future__ import annotations

import ast
import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from email import message_from_string
from email.message import Message
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import tomllib

REPO = Path(__file__).resolve().parents[2]
PACKAGES = REPO / "packages"
PROBE = Path(__file__).with_name("probe.py")
NAMESPACE = "channels_valkey"

#: Each distribution and the one module it ships under ``channels_valkey`` (docs/architecture.md), in dependency order.
MODULES = {
    "channels-valkey-serializers": "serializers",
    "channels-valkey-sentinel": "sentinel",
    "channels-valkey-core": "core",
    "channels-valkey-pubsub": "pubsub",
    "channels-valkey": "cli",
}

#: Generous bounds: a first run downloads hatchling and the third-party wheels.
BUILD_TIMEOUT = 300
INSTALL_TIMEOUT = 600
RUN_TIMEOUT = 60

#: Variables of the outer test environment that would leak it into a fresh interpreter, pip or hatch.
LEAKY_VARIABLES = frozenset(
    {"PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV", "HATCH_ENV_ACTIVE"}
    | {"PIP_USER", "PIP_TARGET", "PIP_PREFIX"}
)


def clean_environment() -> dict[str, str]:
    """``os.environ`` without what points at the environment the tests themselves run in."""
    return {key: value for key, value in os.environ.items() if key not in LEAKY_VARIABLES}


def read_version(about: Path) -> str:
    """The ``__version__`` string assigned in an ``__about__.py``, read without importing it."""
    for node in ast.parse(about.read_text(encoding="utf-8")).body:
        if (
            isinstance(node, ast.Assign)
            and [getattr(target, "id", None) for target in node.targets] == ["__version__"]
            and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, str)
        ):
            return node.value.value
    raise ValueError(f"{about} assigns no string to __version__; hatch reads the version from there")


def file_stem(name: str) -> str:
    """The distribution name as wheel and sdist file names spell it."""
    return re.sub(r"[-_.]+", "_", name).lower()


@dataclass(frozen=True)
class Distribution:
    """One distribution: its source folder, its declared metadata and the files ``hatch build`` made of it."""

    name: str
    module: str
    folder: Path
    pyproject: dict[str, Any]
    version: str
    #: Its module's source files when the build started, as paths inside a wheel.
    sources: frozenset[str]
    wheel: Path
    sdist: Path

    @property
    def project(self) -> dict[str, Any]:
        """The ``[project]`` table of its pyproject.toml."""
        project: dict[str, Any] = self.pyproject["project"]
        return project

    @property
    def dist_info(self) -> str:
        """The wheel's metadata folder."""
        return f"{file_stem(self.name)}-{self.version}.dist-info"

    @property
    def sdist_root(self) -> str:
        """The single top folder of the sdist."""
        return f"{file_stem(self.name)}-{self.version}"

    def wheel_files(self) -> set[str]:
        """The files the wheel installs into site-packages (its metadata folder aside)."""
        with zipfile.ZipFile(self.wheel) as wheel:
            return {name for name in wheel.namelist() if not name.startswith(f"{self.dist_info}/")}

    def wheel_text(self, name: str) -> str | None:
        """A file of the wheel's metadata folder, or None when the wheel has no such file."""
        with zipfile.ZipFile(self.wheel) as wheel:
            try:
                return wheel.read(f"{self.dist_info}/{name}").decode("utf-8")
            except KeyError:
                return None

    def wheel_metadata(self) -> Message:
        """The wheel's METADATA, parsed as the email-header format it is."""
        return message_from_string(self.wheel_text("METADATA") or "")

    def sdist_files(self) -> set[str]:
        """The sdist's files, relative to its top folder."""
        with tarfile.open(self.sdist) as sdist:
            return {
                PurePosixPath(member.name).relative_to(self.sdist_root).as_posix()
                for member in sdist.getmembers()
                if member.isfile()
            }

    def sdist_text(self, name: str) -> str | None:
        """A file of the sdist, by its path inside the top folder, or None when the sdist has no such file."""
        with tarfile.open(self.sdist) as sdist:
            try:
                member = sdist.extractfile(f"{self.sdist_root}/{name}")
            except KeyError:
                return None
            return None if member is None else member.read().decode("utf-8")

    def sdist_metadata(self) -> Message:
        """The sdist's PKG-INFO."""
        return message_from_string(self.sdist_text("PKG-INFO") or "")


@dataclass(frozen=True)
class Build:
    """Every distribution built once for the session, with wheels and sdists in separate folders."""

    distributions: dict[str, Distribution]
    wheels: Path
    sdists: Path
    #: pip constraints pinning each distribution to the version built here, so nothing resolves to PyPI.
    constraints: Path

    def __getitem__(self, name: str) -> Distribution:
        return self.distributions[name]


@contextmanager
def exclusive(lock: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``lock`` (a file): pytest-xdist workers of one run take turns."""
    with lock.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def shared_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder every pytest-xdist worker of this run sees (the run's own temporary folder without xdist)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def run_hatch_builds(hatch: str, out: Path) -> None:
    """Run ``hatch build`` in every package folder at once; fail with the output of those that failed."""
    processes = {
        name: subprocess.Popen(
            [hatch, "build", "-t", "wheel", "-t", "sdist", str(out / name)],
            cwd=PACKAGES / name,
            env=clean_environment(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for name in MODULES
    }
    failures = []
    try:
        for name, process in processes.items():
            output, _ = process.communicate(timeout=BUILD_TIMEOUT)
            if process.returncode != 0:
                failures.append(f"`hatch build` in packages/{name} exited {process.returncode}:\n{output}")
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.kill()
                process.wait()
    if failures:
        pytest.fail("\n\n".join(failures), pytrace=False)


def only_file(folder: Path, pattern: str) -> Path:
    """The single file in ``folder`` matching ``pattern``; anything else means the build did not do its job."""
    matches = sorted(folder.glob(pattern))
    if len(matches) != 1:
        pytest.fail(f"expected one {pattern} in {folder}, found {[m.name for m in matches]}", pytrace=False)
    return matches[0]


def module_sources(name: str) -> list[str]:
    """The files under a distribution's module folder, as paths inside a wheel (bytecode aside)."""
    src = PACKAGES / name / "src"
    return sorted(
        path.relative_to(src).as_posix()
        for path in (src / NAMESPACE / MODULES[name]).rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    )


def declared_version(name: str) -> str:
    """The version a distribution's pyproject.toml points hatch at."""
    folder = PACKAGES / name
    pyproject = tomllib.loads((folder / "pyproject.toml").read_text(encoding="utf-8"))
    return read_version(folder / pyproject["tool"]["hatch"]["version"]["path"])


def build_all(root: Path) -> None:
    """Build every wheel and sdist under ``root/out``, then sort them into ``root/wheels`` and ``root/sdists``.

    Also writes, next to them, the pip constraints pinning our five distributions to the versions built here, and
    the list of source files each module had when the build started (other work may add files during a long run).
    """
    hatch = shutil.which("hatch")
    if hatch is None:
        pytest.fail(
            "tests/packaging builds the distributions with `hatch build`, but no `hatch` is on PATH: "
            "install hatch (`pip install hatch`) and run the suite with `hatch test`",
            pytrace=False,
        )
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    sources = {name: module_sources(name) for name in MODULES}
    out = root / "out"
    run_hatch_builds(hatch, out)
    for folder in ("wheels", "sdists"):
        (root / folder).mkdir()
    for name in MODULES:
        for pattern, folder in (("*.whl", "wheels"), ("*.tar.gz", "sdists")):
            built = only_file(out / name, pattern)
            built.rename(root / folder / built.name)
    (root / "sources.json").write_text(json.dumps(sources), encoding="utf-8")
    pins = "".join(f"{name}=={declared_version(name)}\n" for name in MODULES)
    (root / "constraints.txt").write_text(pins, encoding="utf-8")


@pytest.fixture(scope="session")
def build(tmp_path_factory: pytest.TempPathFactory) -> Build:
    """Every distribution built once per test run (and shared by pytest-xdist workers) with ``hatch build``."""
    shared = shared_root(tmp_path_factory)
    root = shared / "packaging-build"
    done = shared / "packaging-build.done"
    with exclusive(shared / "packaging-build.lock"):
        if not done.exists():
            build_all(root)
            done.touch()

    sources = json.loads((root / "sources.json").read_text(encoding="utf-8"))
    distributions = {}
    for name, module in MODULES.items():
        folder = PACKAGES / name
        distributions[name] = Distribution(
            name=name,
            module=module,
            folder=folder,
            pyproject=tomllib.loads((folder / "pyproject.toml").read_text(encoding="utf-8")),
            version=declared_version(name),
            sources=frozenset(sources[name]),
            wheel=only_file(root / "wheels", f"{file_stem(name)}-*.whl"),
            sdist=only_file(root / "sdists", f"{file_stem(name)}-*.tar.gz"),
        )
    return Build(
        distributions, wheels=root / "wheels", sdists=root / "sdists", constraints=root / "constraints.txt"
    )


@pytest.fixture(params=list(MODULES))
def distribution(request: pytest.FixtureRequest, build: Build) -> Distribution:
    """Each of the five built distributions in turn."""
    return build[request.param]


@dataclass(frozen=True)
class FreshVenv:
    """A virtual environment made for one test, with nothing installed in it, not even pip."""

    path: Path
    build: Build
    #: The interpreter of a separate environment whose pip installs into this one (``pip --python``).
    installer: Path

    @property
    def python(self) -> Path:
        return self.path / "bin" / "python"

    def run(self, *command: str | Path, timeout: float = RUN_TIMEOUT) -> subprocess.CompletedProcess[str]:
        """Run a command with this environment's bin first on PATH, from a folder that holds no sources."""
        environment = clean_environment()
        environment["PATH"] = f"{self.path / 'bin'}{os.pathsep}{environment.get('PATH', '')}"
        return subprocess.run(
            [str(part) for part in command],
            cwd=self.path,
            env=environment,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def pip_install(self, *requirements: str | Path, find_links: Path | None = None) -> str:
        """Install into this environment with pip, every distribution of ours pinned to the version built here.

        With ``find_links`` pip takes the siblings the requirements need from that folder of built wheels;
        third-party requirements come from the configured indexes (PyPI).
        """
        pip = [self.installer, "-I", "-m", "pip", "--python", self.python]
        # Byte-compiling Django on every install would cost seconds and prove nothing here.
        command = [*pip, "install", "--no-input", "--progress-bar=off", "--no-compile"]
        command += ["--constraint", self.build.constraints]
        if find_links is not None:
            command += ["--find-links", find_links]
        result = self.run(*command, *requirements, timeout=INSTALL_TIMEOUT)
        if result.returncode != 0:
            pytest.fail(
                f"pip install {' '.join(map(str, requirements))} failed ({result.returncode}):\n"
                f"{result.stdout}\n{result.stderr}",
                pytrace=False,
            )
        return result.stdout

    def install_wheel(self, name: str, extras: str = "") -> str:
        """Install one built wheel by its file, letting its sibling requirements resolve to the built wheels."""
        wheel = self.build[name].wheel
        return self.pip_install(f"{wheel}[{extras}]" if extras else wheel, find_links=self.build.wheels)

    def probe(self, *, find: tuple[str, ...] = (), imports: tuple[str, ...] = ()) -> dict[str, Any]:
        """What this environment holds, as reported by probe.py run with its own isolated interpreter."""
        request = json.dumps({"find": list(find), "import": list(imports)})
        result = self.run(self.python, "-I", PROBE, request)
        if result.returncode != 0:
            pytest.fail(
                f"probe.py failed ({result.returncode}):\n{result.stdout}\n{result.stderr}", pytrace=False
            )
        report: dict[str, Any] = json.loads(result.stdout)
        return report


def make_venv(path: Path, *, with_pip: bool) -> None:
    """``python -m venv`` with the interpreter running the tests, failing the test with its output."""
    command = [sys.executable, "-m", "venv", *([] if with_pip else ["--without-pip"]), str(path)]
    created = subprocess.run(
        command, env=clean_environment(), capture_output=True, text=True, timeout=INSTALL_TIMEOUT, check=False
    )
    if created.returncode != 0:
        pytest.fail(f"{' '.join(command)} failed:\n{created.stdout}\n{created.stderr}", pytrace=False)


@pytest.fixture(scope="session")
def installer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The interpreter of one virtual environment with pip, which installs into every fresh one.

    Seeding pip into each fresh environment costs about six seconds of CPU apiece (ensurepip installs and
    byte-compiles pip and setuptools); ``pip --python`` installs into an environment exactly as its own pip would,
    and leaves the fresh environments holding nothing but what the packages under test brought.
    """
    path = tmp_path_factory.mktemp("installer") / "venv"
    make_venv(path, with_pip=True)
    return path / "bin" / "python"


@pytest.fixture
def fresh_venv(build: Build, installer: Path, tmp_path: Path) -> Iterator[FreshVenv]:
    """A new, empty virtual environment, removed after the test (with Django in it, each weighs some 60 MB)."""
    path = tmp_path / "venv"
    make_venv(path, with_pip=False)
    yield FreshVenv(path, build, installer)
    shutil.rmtree(path, ignore_errors=True)

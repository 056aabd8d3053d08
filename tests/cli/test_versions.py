"""``channels-valkey versions``: the five distributions of the development install, as text and as JSON."""

from __future__ import annotations

from collections.abc import Callable
from importlib import metadata
from typing import Any

from channels_valkey.cli.main import DISTRIBUTIONS


def test_versions_lists_all_five_as_text_and_json(run_cli: Callable[..., Any]) -> None:
    expected = {name: metadata.version(name) for name in DISTRIBUTIONS}
    status, out, _ = run_cli("versions")
    assert status == 0
    assert [line.split() for line in out.splitlines()] == [
        [name, version] for name, version in expected.items()
    ]
    result = run_cli("versions", "--json")
    assert (result.status, result.json()) == (0, expected)


def test_no_command_prints_help_and_exits_2(run_cli: Callable[..., Any]) -> None:
    status, out, _ = run_cli()
    assert status == 2
    for command in ("check", "inspect", "serve", "bench", "versions"):
        assert command in out

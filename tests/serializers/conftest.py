"""Fixtures of the serializer tests. Self-contained on purpose: the serializers-only environment runs these tests
with ``--confcutdir=tests/serializers``, so nothing from tests/conftest.py (which needs valkey) is used."""

from __future__ import annotations

from typing import Any

import pytest

from .samples import EVERY_TYPE, without_bytes


@pytest.fixture
def every_type() -> dict[str, Any]:
    """A fresh copy of :data:`EVERY_TYPE` (tests may not change the shared one)."""
    return _copy(EVERY_TYPE)


@pytest.fixture
def every_json_type() -> dict[str, Any]:
    """:data:`EVERY_TYPE` without bytes: everything both our JSON and the peers' can write."""
    return _copy(without_bytes(EVERY_TYPE))


def _copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _copy(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_copy(item) for item in value]
    return value

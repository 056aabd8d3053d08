"""The package stands alone: importing and using it loads nothing of Django, Channels, valkey or the peers.

Checked in a fresh interpreter, so modules other tests imported do not count. ``cryptography`` is only imported
once keys are configured.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

FOREIGN = ("django", "channels", "asgiref", "valkey", "redis", "channels_redis")


def modules_loaded_after(body: str) -> set[str]:
    code = (
        textwrap.dedent(body)
        + "\nimport json, sys\nprint(json.dumps(sorted({name.split('.')[0] for name in sys.modules})))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    return set(json.loads(result.stdout.splitlines()[-1]))


def test_plain_use_imports_no_framework_and_not_cryptography() -> None:
    loaded = modules_loaded_after(
        """
        from channels_valkey.serializers import registry
        serializer = registry.get_serializer("msgpack", random_prefix_length=12)
        assert serializer.deserialize(serializer.serialize({"type": "x"})) == {"type": "x"}
        """
    )
    assert "channels_valkey" in loaded
    assert "msgpack" in loaded
    assert loaded.isdisjoint(FOREIGN)
    assert "cryptography" not in loaded


def test_encrypted_use_imports_cryptography_and_still_no_framework() -> None:
    loaded = modules_loaded_after(
        """
        from channels_valkey.serializers import registry
        serializer = registry.get_serializer("json", symmetric_encryption_keys=["k"], random_prefix_length=12)
        assert serializer.deserialize(serializer.serialize({"type": "x"})) == {"type": "x"}
        """
    )
    assert "cryptography" in loaded
    assert loaded.isdisjoint(FOREIGN)


def test_the_readme_example_runs() -> None:
    """The standalone example of the package README, run as written."""
    from pathlib import Path

    readme = Path(__file__).resolve().parents[2] / "packages" / "channels-valkey-serializers" / "README.md"
    text = readme.read_text(encoding="utf-8")
    blocks = [block.split("```", 1)[0] for block in text.split("```python\n")[1:]]
    assert blocks, "the README has no python example"
    for block in blocks:
        result = subprocess.run(
            [sys.executable, "-c", block], capture_output=True, text=True, timeout=120, check=False
        )
        assert result.returncode == 0, f"README example failed:\n{block}\n{result.stderr}"

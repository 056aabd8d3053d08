"""Without ``cryptography`` installed, plain serializers work and asking for encryption names the extra.

Each test runs a fresh interpreter in which importing ``cryptography`` fails exactly as it does when the package
is not installed (``sys.modules['cryptography'] = None`` makes every ``import cryptography...`` raise
ModuleNotFoundError), then imports this package.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap


def run_without_cryptography(body: str) -> subprocess.CompletedProcess[str]:
    code = "import sys\nsys.modules['cryptography'] = None\n" + textwrap.dedent(body)
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )


def test_plain_serializers_work_without_cryptography() -> None:
    result = run_without_cryptography(
        """
        from channels_valkey.serializers import registry
        for fmt in ("msgpack", "json"):
            serializer = registry.get_serializer(fmt, random_prefix_length=12, expiry=60)
            message = {"type": "x", "b": b"\\x00"}
            assert serializer.deserialize(serializer.serialize(message)) == message
        print("plain ok")
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "plain ok"


def test_keys_without_cryptography_name_the_extra_to_install() -> None:
    result = run_without_cryptography(
        """
        from channels_valkey.serializers import MsgPackSerializer, SerializerConfigError, registry
        try:
            registry.get_serializer("msgpack", symmetric_encryption_keys=["secret"], random_prefix_length=12)
        except SerializerConfigError as exc:
            print("get_serializer:", exc)
        try:
            MsgPackSerializer().make_fernet("secret")
        except SerializerConfigError as exc:
            print("make_fernet:", exc)
        """
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert [line.split(":")[0] for line in lines] == ["get_serializer", "make_fernet"]
    for line in lines:
        assert "needs the 'cryptography' package" in line
        assert "pip install 'channels-valkey-serializers[cryptography]'" in line


def test_the_error_is_a_value_error_as_with_the_peers() -> None:
    result = run_without_cryptography(
        """
        from channels_valkey.serializers import JSONSerializer
        try:
            JSONSerializer(symmetric_encryption_keys=["secret"])
        except ValueError as exc:
            print(type(exc).__name__)
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "SerializerConfigError"

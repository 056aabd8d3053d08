"""Password masking for what host specs and host errors show: URLs, option dicts and whole settings.

Every password is shown as ``***``, so no log line, exception or traceback built from these carries one.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Set
from typing import Any

# Key names whose values are never shown; "pas" also catches misspellings such as "pasword".
_SECRET_KEY_PARTS = ("pas", "pwd", "secret", "token", "credential", "auth")
# Greedy up to the last '@', as urllib splits the host off, so a password holding '@' is masked whole.
_URL_USERINFO = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>.*)@", re.DOTALL)
# "password=..." in a query string, or in any text given where a dict was due.
_ASSIGNED_SECRET = re.compile(
    rf"(?P<key>(?:^|[?&;,\s])[^=&#;,\s]*(?:{'|'.join(_SECRET_KEY_PARTS)})[^=&#;,\s]*=)[^&#;,\s]*",
    re.IGNORECASE,
)


def redacted_userinfo(options: Mapping[str, Any]) -> str:
    """The ``username:***@`` part of a URL for connection ``options``; empty without username and password."""
    username = options.get("username") or ""
    password = "***" if options.get("password") else ""
    if not (username or password):
        return ""
    return f"{username}:{password}@" if password else f"{username}@"


def redact_url(text: str) -> str:
    """``text`` with passwords replaced by ``***``: a URL's userinfo, and ``password=...`` assignments."""

    def userinfo(match: re.Match[str]) -> str:
        user, colon, _ = match["userinfo"].partition(":")
        return f"{match['head']}{user}:***@" if colon else match[0]

    return _ASSIGNED_SECRET.sub(r"\g<key>***", _URL_USERINFO.sub(userinfo, text))


def redacted_repr(value: object, limit: int = 400) -> str:
    """The repr of a setting or entry for an error message: passwords masked, cut to ``limit`` characters."""
    text = repr(_redacted(value))
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _redacted(value: object) -> object:
    """A copy of ``value`` with secret-named dict values and passwords in strings masked, at any depth."""
    if isinstance(value, Mapping):
        return {key: "***" if _is_secret_key(key) else _redacted(item) for key, item in value.items()}
    if isinstance(value, tuple):
        return tuple(_redacted(item) for item in value)
    if isinstance(value, list):
        return [_redacted(item) for item in value]
    if isinstance(value, Set):
        return {_redacted(item) for item in value}
    if isinstance(value, str):
        return redact_url(value)
    if isinstance(value, bytes):
        return redact_url(value.decode("utf-8", "replace")).encode()
    return value


def _is_secret_key(key: object) -> bool:
    return isinstance(key, str) and any(part in key.lower() for part in _SECRET_KEY_PARTS)

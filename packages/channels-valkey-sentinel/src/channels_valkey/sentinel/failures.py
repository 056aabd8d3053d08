"""What a failed command means for a retry: it cannot have run, it may have run, or retrying cannot help.

The distinction is what lets the layers retry writes safely: a command refused before it ran (connection
refused, ``READONLY`` from a demoted primary, ``LOADING``) may be sent again whatever it does, while a command whose
reply was lost may have run and is retried only when it is idempotent.
"""

from __future__ import annotations

import enum
import ssl
import types

from valkey import exceptions as valkey_errors

from channels_valkey.sentinel.exceptions import CommandNotSent, ReplyLost, ShardUnavailable
from channels_valkey.sentinel.transport_writes import closed_before_write

#: Error replies meaning "this node will not take writes now; ask the Sentinels where the primary is".
NOT_PRIMARY_REPLIES = ("NOREPLICAS", "MASTERDOWN")


class Failure(enum.Enum):
    """How a command failed, as far as retrying it is concerned."""

    NOT_RUN = "the command cannot have run"
    MAYBE_RUN = "the command may have run"
    FATAL = "retrying cannot help"


def classify(error: BaseException) -> Failure | None:
    """The kind of failure ``error`` is, or None when it is an ordinary error reply for the caller to handle."""
    if isinstance(error, valkey_errors.AuthenticationError | valkey_errors.AuthorizationError):
        return Failure.FATAL
    if isinstance(error, valkey_errors.NoPermissionError):
        return Failure.FATAL
    if _in_chain(error, ssl.SSLError):
        # A bad certificate, a wrong CA or a peer that does not speak TLS fails the same way every time.
        return Failure.FATAL
    if _in_chain(error, valkey_errors.ReadOnlyError | valkey_errors.BusyLoadingError):
        # valkey-py's Sentinel connections turn READONLY into a ConnectionError; the refusal is in the chain.
        return Failure.NOT_RUN
    if isinstance(
        error, valkey_errors.MovedError | valkey_errors.TryAgainError | valkey_errors.ClusterDownError
    ):
        # A cluster node refusing a key it does not own now, or a slot in the middle of moving.
        return Failure.NOT_RUN
    if isinstance(error, valkey_errors.ResponseError):
        return Failure.NOT_RUN if str(error).startswith(NOT_PRIMARY_REPLIES) else None
    if isinstance(error, CommandNotSent):
        return Failure.NOT_RUN
    if isinstance(error, valkey_errors.ConnectionError | valkey_errors.TimeoutError):
        # valkey-py words every failure to open a connection "... connecting to ..."; nothing was sent then.
        # A Sentinel that knows no usable primary yet (MasterNotFoundError) is the same: nothing was sent.
        if "connecting to" in str(error) or type(error).__name__ == "MasterNotFoundError":
            return Failure.NOT_RUN
        return Failure.MAYBE_RUN
    if type(error) is valkey_errors.ValkeyError and str(error) == "Buffer is closed.":
        # valkey-py's pool checking a connection that a failover reset closed under it: nothing was sent yet.
        return Failure.NOT_RUN
    if _is_unwritten_send(error) or closed_before_write(error):
        return Failure.NOT_RUN
    return None


def _is_unwritten_send(error: BaseException) -> bool:
    """Whether ``error`` is valkey-py writing a command to a connection that a reset closed a moment before.

    ``send_packed_command`` awaits the health-check PING (and, on Python 3.11, the task ``wait_for`` starts)
    before it writes; a failover reset that disconnects in-use connections in that window leaves the
    connection's writer at None, and the write fails with this AttributeError before any byte left.
    """
    return isinstance(error, AttributeError) and error.name == "writelines" and error.obj is None


def raise_if_reply_lost(error: BaseException, what: str) -> None:
    """Raise :class:`ReplyLost` naming ``what`` (for example "send to 'chat'") when ``error`` means a message was
    written and its reply lost; return for any other failure, which the caller raises itself.

    The layers call it for sends, which are not retried after a lost reply (a second copy could arrive twice), so
    that the caller learns the message may have been delivered rather than reading a bare connection error.
    """
    if isinstance(error, ReplyLost) or classify(error) is not Failure.MAYBE_RUN:
        return
    if isinstance(error, ShardUnavailable) and classify(error.cause) is Failure.FATAL:
        return  # refused (credentials, ACL rights, TLS): the command did not run, and the shard is what to fix
    raise ReplyLost(
        f"{what}: the connection failed after the message was written ({type(error).__name__}: {error}); the "
        "message may have been delivered, so it was not sent again: a second copy could arrive twice"
    ) from error


def refuses_health_check(error: BaseException) -> bool:
    """Whether ``error`` is an ACL refusing the PING of a connection health check (not the command itself)."""
    return isinstance(error, valkey_errors.NoPermissionError) and "'ping'" in str(error).lower()


def is_not_primary(error: BaseException) -> bool:
    """Whether ``error`` says the node is no (longer a) primary, so the connections must be re-resolved."""
    if _in_chain(error, valkey_errors.ReadOnlyError):
        return True
    return isinstance(error, valkey_errors.ResponseError) and str(error).startswith(NOT_PRIMARY_REPLIES)


def _in_chain(error: BaseException, kind: type[BaseException] | types.UnionType) -> bool:
    """Whether ``error`` or an exception it was raised from (or while handling) is of ``kind``."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, kind):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False

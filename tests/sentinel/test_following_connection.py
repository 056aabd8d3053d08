"""The connections of a Sentinel shard's pool (shard.py): what a dropped layer's garbage collection meets."""

from __future__ import annotations

import gc
import weakref

from valkey.asyncio.connection import SSLConnection
from valkey.asyncio.sentinel import SentinelManagedConnection

from channels_valkey.sentinel.shard import FollowingConnection, FollowingSSLConnection


class _Pool:
    service_name = "primary"


def test_the_repr_of_a_connection_whose_pool_was_collected_names_its_address() -> None:
    # valkey-py's repr reads the pool through a weak proxy: a connection outliving its pool raised ReferenceError
    # from the unclosed-connection warning of its __del__.
    pool = _Pool()
    connection = FollowingConnection(connection_pool=weakref.proxy(pool), host="10.0.0.7", port=6390)
    assert "service=primary" in repr(connection)
    del pool
    gc.collect()
    assert repr(connection).endswith("FollowingConnection(host=10.0.0.7,port=6390)>")


def test_the_tls_variant_is_both_a_following_and_a_tls_connection() -> None:
    assert issubclass(FollowingSSLConnection, SSLConnection)
    assert issubclass(FollowingSSLConnection, SentinelManagedConnection)

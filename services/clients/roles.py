"""A status answer's ReplicaRole (GetAccountsStatus, GetMatchingStatus) as people read it."""

from __future__ import annotations

from exchange.v1 import replica_pb2


def role_name(role: int) -> str:
    """leader, follower, standalone (unspecified: a process older than the field)."""
    return replica_pb2.ReplicaRole.Name(role).removeprefix("REPLICA_ROLE_").lower()


def in_cluster(role: int) -> bool:
    """True for a replica in cluster mode (leader or follower)."""
    return role in (replica_pb2.REPLICA_ROLE_LEADER, replica_pb2.REPLICA_ROLE_FOLLOWER)

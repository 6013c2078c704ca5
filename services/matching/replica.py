"""Cluster mode of a matching shard: one leader and hot followers per shard (issue 11).

    python -m services.matching --config FILE --shard matching-0 \\
        --zk 127.0.0.1:2181 --nats nats://127.0.0.1:4301,nats://127.0.0.1:4302 \\
        --member a --listen 127.0.0.1:50061 [--advertise HOST:PORT] [--data-dir DIR] \\
        [--session-timeout 2] [--stream-replicas 3]

The replica machinery (election, promotion, fail-stop when deposed, the stream as the command journal,
the local event log regenerated per replica) is services.cluster.replica, shared with accounts. Here:
a follower serves GetDepth, ListBookOrders, GetMatchingStatus and StreamEvents, and refuses
SubmitCommands with FAILED_PRECONDITION, reason NOT_LEADER, naming the leader (ReplicaServicer); the
elected one starts the shard's expiry timer once promoted (services.matching.__main__).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
from exchange.v1 import matching_service_pb2 as pb
from exchange.v1 import replica_pb2

from services.cluster.replica import ClusterOptions, Deposed, Replica, refused_write_stream
from services.matching.service import MatchingServicer

__all__ = ["ClusterOptions", "Deposed", "Replica", "ReplicaServicer"]


class ReplicaServicer(MatchingServicer):
    """MatchingServicer whose write RPC is refused while the host follows (NOT_LEADER) or after its
    writer failed (WRITER_FAILED). Reads are the servicer's own: they read the host's machine,
    which a follower keeps current; GetMatchingStatus says which it is (role)."""

    def role(self) -> replica_pb2.ReplicaRole:
        """FOLLOWER while the host follows the command journal, LEADER once promoted."""
        return replica_pb2.REPLICA_ROLE_FOLLOWER if self.host.following else replica_pb2.REPLICA_ROLE_LEADER

    async def SubmitCommands(
        self,
        request_iterator: AsyncIterator[pb.SubmitCommandsRequest],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[pb.SubmitCommandsResponse]:
        if await refused_write_stream(self.host, request_iterator, context):
            return
        async for response in super().SubmitCommands(request_iterator, context):
            yield response

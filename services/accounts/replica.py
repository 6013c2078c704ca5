"""Cluster mode of an accounts shard: one leader and hot followers per accounts shard (issue 11).

    python -m services.accounts --config FILE [--shard accounts-<i>] \\
        --zk 127.0.0.1:2181 --nats nats://127.0.0.1:4301,nats://127.0.0.1:4302 \\
        --member a --listen 127.0.0.1:50051 [--advertise HOST:PORT] [--data-dir DIR] \\
        [--metrics-listen HOST:PORT] [--session-timeout 2] [--stream-replicas 3] [--zk-root /ostrakon]

The replica machinery is services.cluster.replica (shared with matching): the accounts shard's command
journal is its JetStream stream (stream service = the shard's source name, "accounts-<i>"), each
replica regenerates its event log from it into its own data directory and keeps its own snapshots;
the ZooKeeper election of shard i is held under the resolver's name of that shard ("accounts" for the
first, "accounts-<i>" after it: services.clients.resolver.accounts_name), so that
services.clients.zk_resolver finds the leader under the name the client library dials.

A follower serves the reads (GetBalances, GetOrder, ListOpenOrders, ListSubAccounts,
GetAccountsStatus, ListAssets, ListMarkets, StreamAccountEvents, StreamUserEvents: its machine and
event log are current) and refuses every write (Deposit, Withdraw, PlaceOrder, CancelOrder,
CancelAllOrders, AmendOrder, OpenSubAccount, Transfer through the host's NOT_LEADER refusal;
SubmitOrders before anything of the stream is read into the host, AccountsReplicaServicer) with
FAILED_PRECONDITION, reason NOT_LEADER, metadata "leader" and "shard"; the client library
(services.clients.accounts) redirects.

Only the leader runs accounts' outbound links (services.accounts.links), started once promoted
(services.accounts.__main__), each to its matching shard's leader (MatchingLeaders): the Forwarders
begin from what each matching shard says it applied of this source (resending from the stream, which
the leader prunes only below what every matching shard acknowledged and below the second-newest shared
snapshot, services.cluster.snapshots), and the SettlementFeeds follow each matching
shard from the machine's own settled checkpoint. A follower runs neither and applies no effects, so
nothing is sent or settled on a follower's account; a command the old leader forwarded is one
matching already applied (it drops the resend), and a settlement the old leader queued but never
made durable is followed again from the checkpoint.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import grpc
from exchange.v1 import accounts_service_pb2 as pb
from exchange.v1 import replica_pb2

from services.accounts.service import AccountsServicer
from services.clients.channels import Connection
from services.clients.resolver import StaticResolver
from services.clients.zk_resolver import ZooKeeperResolver
from services.cluster.replica import ClusterOptions, refused_write_stream


class AccountsReplicaServicer(AccountsServicer):
    """AccountsServicer whose batched order entry is refused at once while the host follows (NOT_LEADER)
    or after its writer failed (WRITER_FAILED). The unary writes are refused by the host itself; the
    reads are the servicer's own, served from the machine a follower keeps current. GetAccountsStatus
    says which it is (role FOLLOWER while the host follows, LEADER once promoted)."""

    def role(self) -> replica_pb2.ReplicaRole:
        """FOLLOWER while the host follows the command journal, LEADER once promoted."""
        return replica_pb2.REPLICA_ROLE_FOLLOWER if self.host.following else replica_pb2.REPLICA_ROLE_LEADER

    async def SubmitOrders(
        self,
        request_iterator: AsyncIterator[pb.SubmitOrdersRequest],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[pb.SubmitOrdersResponse]:
        if await refused_write_stream(self.host, request_iterator, context):
            return
        async for response in super().SubmitOrders(request_iterator, context):
            yield response


class MatchingLeaders:
    """Where a leader's links dial each matching shard in cluster mode: the shard's leader from
    ZooKeeper (services.clients.zk_resolver, followed with watches), else its configured address (a
    shard that runs no replicas, or before its first election). A Forwarder asks at every session
    (a follower of the shard refuses its commands with NOT_LEADER; the link retries at the leader),
    a SettlementFeed's connection follows the leader as it changes."""

    def __init__(self, options: ClusterOptions, addresses: Mapping[str, str]) -> None:
        self.fallback = StaticResolver(dict(addresses))
        self.resolver = ZooKeeperResolver(options.zk_hosts, root=options.zk_root, fallback=self.fallback)

    def forwarder_address(self, shard: str, address: str) -> Callable[[], str]:
        self.fallback.set(shard, address)
        return lambda: self.resolver.address(shard)

    def feed_connection(self, shard: str, address: str) -> Connection:
        self.fallback.set(shard, address)
        return Connection(shard, self.resolver)

    def close(self) -> None:
        self.resolver.close()

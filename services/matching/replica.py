"""Cluster mode of a matching shard: one leader and hot followers per shard (issue 11).

    python -m services.matching --config FILE --shard matching-0 \\
        --zk 127.0.0.1:2181 --nats nats://127.0.0.1:4301,nats://127.0.0.1:4302 \\
        --member a --listen 127.0.0.1:50061 [--advertise HOST:PORT] [--data-dir DIR] \\
        [--session-timeout 2] [--stream-replicas 3]

Every replica runs the same process:

- the command journal is the shard's JetStream stream (services.common.journal.jetstream, one per
  shard, `--stream-replicas` copies); the event log is a local file journal that each replica
  regenerates from the commands (services.cluster.journals.RoutedJournals); snapshots are local
  files of each replica (its own data directory) and the stream is not pruned in this mode (a
  replica restarting from an older snapshot, or from none, replays the stream from there);
- it starts as a follower (StateMachineHost.start_following over JetStreamJournals.open_reader):
  its book and event log stay current, it serves GetDepth, ListBookOrders, GetMatchingStatus and
  StreamEvents, and refuses SubmitCommands with FAILED_PRECONDITION, reason NOT_LEADER, ErrorInfo
  metadata "leader" = the leader's advertise address (read from ZooKeeper) and "shard";
- it contends in the shard's ZooKeeper election (services.cluster.election.ShardElection, which
  publishes the leader's advertise address for services.clients.zk_resolver). Elected, it is
  promoted (StateMachineHost.promote: catch up to the stream's end, open the stream as its writer,
  fence it, start the writer) and starts the shard's expiry timer;
- a leader that is deposed (its ZooKeeper session suspended or lost, or the election stopped under
  it) or fenced (its append refused because a newer leader wrote) fail-stops: health NOT_SERVING,
  one CRITICAL line, exit code 70 (services.common.failstop); its supervisor restarts it, as a
  follower. A frozen leader that wakes after its session expired is refused by the stream (the new
  leader fenced it when it took over) whichever it tries first.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import grpc
from exchange.v1 import matching_service_pb2 as pb
from kazoo.recipe.watchers import DataWatch

from services.cluster.election import DEFAULT_ROOT, LeaderInfo, ShardElection, leader_path
from services.common.rpc import abort
from services.matching.service import MatchingHost, MatchingServicer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClusterOptions:
    zk_hosts: str
    nats_urls: tuple[str, ...]
    member: str
    advertise: str
    session_timeout_s: float = 2.0
    stream_replicas: int = 1
    zk_root: str = DEFAULT_ROOT


class Deposed(RuntimeError):
    """The leader lost its leadership (the process stops; restarted, it follows)."""


class ReplicaServicer(MatchingServicer):
    """MatchingServicer whose write RPC is refused while the host follows (NOT_LEADER) or after its
    writer failed (WRITER_FAILED). Reads are the servicer's own: they read the host's machine,
    which a follower keeps current."""

    async def SubmitCommands(
        self,
        request_iterator: AsyncIterator[pb.SubmitCommandsRequest],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[pb.SubmitCommandsResponse]:
        refusal = self.host.write_refusal()
        if refusal is not None:
            # Refused before the stream is opened: nothing of it reaches the intake (a follower must
            # not count commands as queued that it never applies), and no resume point is reported
            # from a machine that may be ahead of the journal (a failed writer). The source's first
            # request is read first: a status sent while the client is still writing that message
            # reaches it as INTERNAL ("Failed execute_batch", grpc aio), not as the refusal.
            with contextlib.suppress(StopAsyncIteration):
                await request_iterator.__aiter__().__anext__()
            await abort(context, refusal)
            return
        async for response in super().SubmitCommands(request_iterator, context):
            yield response


class Replica:
    """The shard's election for one replica, and what it does when elected or deposed."""

    def __init__(
        self,
        shard: str,
        host: MatchingHost,
        options: ClusterOptions,
        loop: asyncio.AbstractEventLoop,
        *,
        on_leading: Callable[[], None] | None = None,
    ) -> None:
        self.shard = shard
        self.host = host
        self.options = options
        self.loop = loop
        self.on_leading = on_leading
        self.election: ShardElection | None = None
        self._leader = ""  # the current leader's address, from ZooKeeper
        self._stopping = threading.Event()
        self.promoted = threading.Event()
        self.elected_at = 0.0
        host.leader_address = lambda: self._leader

    def start(self) -> None:
        """Connect to ZooKeeper, watch the leader node and contend (blocking: call in a thread)."""
        o = self.options
        self.election = ShardElection(
            o.zk_hosts,
            self.shard,
            o.member,
            o.advertise,
            session_timeout_s=o.session_timeout_s,
            root=o.zk_root,
            on_elected=self._elected,
            on_deposed=self._deposed,
            # Only a lost session deposes (a suspended connection whose session lives on does not: a
            # busy leader whose pings are late keeps leading); writes are fenced at the stream anyway.
            step_down_on_suspend=False,
        )
        DataWatch(self.election.zk, leader_path(o.zk_root, self.shard), self._on_leader)
        self.election.start()
        log.info("contending", extra={"shard": self.shard, "member": o.member, "address": o.advertise})

    def _on_leader(self, data: bytes | None, _stat: Any) -> None:
        address = ""
        if data:
            try:
                address = LeaderInfo.decode(data).address
            except (ValueError, KeyError):
                address = ""
        self._leader = address

    def _elected(self, election: ShardElection) -> None:
        """The election's lead thread: promote the host on its loop, then hold the leadership until
        the process stops (returning would step down)."""
        self.elected_at = time.monotonic()
        log.info(
            "elected", extra={"shard": self.shard, "member": self.options.member, "term": election.terms}
        )
        future = asyncio.run_coroutine_threadsafe(self._promote(), self.loop)
        try:
            future.result()
        except Exception as exc:  # the host fail-stopped (logged there): give the leadership up
            log.error("promotion failed", extra={"shard": self.shard, "error": str(exc)})
            return
        while not self._stopping.wait(0.2):
            if self.host.failure is not None:
                return

    async def _promote(self) -> None:
        await self.host.promote()
        self.promoted.set()
        if self.on_leading is not None:
            self.on_leading()
        log.info(
            "leading",
            extra={
                "shard": self.shard,
                "member": self.options.member,
                "applied_seq": self.host.machine.applied_seq,
                "event_seq": self.host.machine.event_seq,
                "promotion_s": round(time.monotonic() - self.elected_at, 3),
            },
        )

    def _deposed(self, _: ShardElection, why: str) -> None:
        if self._stopping.is_set():
            return
        # Elected once (promoted or being promoted): the host may hold the writer; fail-stop rather
        # than demote in place (the restart follows the stream from a consistent state).
        log.critical(
            "deposed as leader: stopping (a restart follows the new leader)",
            extra={"shard": self.shard, "member": self.options.member, "why": why},
        )
        with contextlib.suppress(RuntimeError):  # the loop is closed: the process is going down
            self.loop.call_soon_threadsafe(self.host.fail, Deposed(f"deposed: {why}"), "leadership")

    def stop(self) -> None:
        """Stop contending (blocking: call in a thread)."""
        self._stopping.set()
        if self.election is not None:
            self.election.stop()

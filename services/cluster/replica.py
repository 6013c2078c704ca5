"""One replica of a state-machine shard in cluster mode: leader or hot follower (issue 11), whatever the
machine (matching shards: services.matching.replica; accounts shards: services.accounts.replica).

Every replica of a shard runs the same process:

- the command journal is the shard's JetStream stream (services.common.journal.jetstream, one per
  shard, `--stream-replicas` copies); the event log is a local file journal that each replica
  regenerates from the commands (services.cluster.journals.RoutedJournals); snapshots are each
  replica's files, and the leader also puts them into the shard's JetStream object store bucket where
  every replica can load them (services.cluster.snapshots.ReplicaSnapshots, which says where and why);
  the leader prunes the stream only below the second-newest shared snapshot, so a replica that starts
  with an empty data directory loads the newest shared snapshot and replays the stream after it:
  `replica_journals`, `replica_snapshots` and `follow_stream` set the host up so;
- it starts as a follower (StateMachineHost.start_following over JetStreamJournals.open_reader): its
  machine and event log stay current, it serves the reads and refuses writes with FAILED_PRECONDITION,
  reason NOT_LEADER, ErrorInfo metadata "leader" = the leader's advertise address (read from ZooKeeper
  by `Replica`) and "shard";
- it contends in the shard's ZooKeeper election (services.cluster.election.ShardElection, which
  publishes the leader's advertise address for services.clients.zk_resolver). Elected, it is promoted
  (StateMachineHost.promote: catch up to the stream's end, open the stream as its writer, fence it,
  start the writer) and then runs what only a leader runs (`on_leading`: matching's expiry timer,
  accounts' links to the matching shards), from the state's own checkpoints;
- a leader that is deposed (its ZooKeeper session lost, or the election stopped under it) or fenced
  (its append refused because a newer leader wrote) fail-stops: health NOT_SERVING, one CRITICAL line,
  exit code 70 (services.common.failstop); its supervisor restarts it, as a follower. A frozen leader
  that wakes after its session expired is refused by the stream (the new leader fenced it when it took
  over) whichever it tries first.

`add_cluster_arguments` / `cluster_options` are the command-line flags both services share:

    --zk HOSTS --nats URL[,URL...] --member NAME [--listen HOST:PORT] [--advertise HOST:PORT]
    [--data-dir DIR] [--metrics-listen HOST:PORT] [--session-timeout 2] [--stream-replicas 1]
    [--zk-root /ostrakon] [--stream-prefix ostrakon]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from kazoo.recipe.watchers import DataWatch

from services.clients.resolver import advertise_address
from services.cluster.election import DEFAULT_ROOT, LeaderInfo, ShardElection, leader_path
from services.cluster.journals import RoutedJournals
from services.cluster.snapshots import ReplicaSnapshots
from services.common.host import StateMachineHost
from services.common.journal import FileJournals
from services.common.journal.jetstream import JetStreamJournals
from services.common.rpc import abort

log = logging.getLogger(__name__)

DEFAULT_STREAM_PREFIX = "ostrakon"  # JetStreamJournals' default


@dataclass(frozen=True)
class ClusterOptions:
    zk_hosts: str
    nats_urls: tuple[str, ...]
    member: str
    advertise: str
    session_timeout_s: float = 2.0
    stream_replicas: int = 1
    zk_root: str = DEFAULT_ROOT
    stream_prefix: str = DEFAULT_STREAM_PREFIX


def add_cluster_arguments(ap: argparse.ArgumentParser, what: str) -> None:
    """The cluster-mode flags (see the module docstring); `what` names the service's own section in
    the help ("the shard's", "the accounts shard's")."""
    cluster = ap.add_argument_group("cluster mode (leader + hot followers; needs --zk and --nats)")
    cluster.add_argument("--zk", default="", help="ZooKeeper hosts (host:port,...)")
    cluster.add_argument("--nats", default="", help="comma-separated NATS URLs of the JetStream cluster")
    cluster.add_argument("--member", default="", help="this replica's name in the election")
    cluster.add_argument("--listen", default="", help=f"gRPC listen address (default: {what})")
    cluster.add_argument("--advertise", default="", help="address clients dial (default: --listen)")
    cluster.add_argument("--data-dir", default="", help=f"this replica's directory (default: {what})")
    cluster.add_argument(
        "--metrics-listen",
        default=None,
        help=f"Prometheus address (default: {what}, or none when --listen is given)",
    )
    cluster.add_argument("--session-timeout", type=float, default=2.0, help="ZooKeeper session (s)")
    cluster.add_argument("--stream-replicas", type=int, default=1, help="JetStream copies of the journal")
    cluster.add_argument("--zk-root", default=DEFAULT_ROOT, help="the exchange's ZooKeeper root node")
    cluster.add_argument(
        "--stream-prefix",
        default=DEFAULT_STREAM_PREFIX,
        help="prefix of the exchange's JetStream stream names (several exchanges on one NATS)",
    )


def check_cluster_arguments(ap: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if bool(args.zk) != bool(args.nats):
        ap.error("cluster mode needs both --zk and --nats")
    if args.zk and not args.member:
        ap.error("cluster mode needs --member")


def cluster_options(args: argparse.Namespace, listen: str) -> ClusterOptions:
    """The options of a replica listening on `listen` (its --listen or the configured address)."""
    return ClusterOptions(
        zk_hosts=args.zk,
        nats_urls=tuple(u for u in args.nats.split(",") if u),
        member=args.member,
        advertise=advertise_address(listen, args.advertise),
        session_timeout_s=args.session_timeout,
        stream_replicas=args.stream_replicas,
        zk_root=args.zk_root,
        stream_prefix=args.stream_prefix,
    )


def metrics_address(args: argparse.Namespace, configured: str) -> str:
    """Where a replica serves Prometheus: --metrics-listen, else the configured address unless
    --listen was given (replicas on one machine would share that port); "" = nowhere."""
    if args.metrics_listen is not None:
        return str(args.metrics_listen)
    return "" if args.listen else configured


def replica_journals(
    options: ClusterOptions, service: str, directory: Path
) -> tuple[JetStreamJournals, RoutedJournals]:
    """The shard's stream (the command journal, shared by its replicas) and the host's journal
    factory: commands from the stream, the event log in this replica's `directory`."""
    stream = JetStreamJournals(
        list(options.nats_urls),
        service=service,
        prefix=options.stream_prefix,
        replicas=options.stream_replicas,
    )
    return stream, RoutedJournals({"commands": stream}, FileJournals(directory))


def replica_snapshots(stream: JetStreamJournals, directory: Path) -> Callable[[], ReplicaSnapshots]:
    """The host's snapshot store factory: files in `directory`/snapshots, shared through the bucket
    next to the shard's stream (opened when the host recovers, off its loop)."""
    return lambda: ReplicaSnapshots.open(directory / "snapshots", stream)


async def follow_stream(host: StateMachineHost[Any, Any], stream: JetStreamJournals) -> None:
    """Start `host` as a follower of the stream's command journal (created when missing)."""
    await asyncio.to_thread(stream.ensure_stream, "commands")
    reader = await asyncio.to_thread(stream.open_reader, "commands")
    await host.start_following(reader)


# How long a replica that refuses a write stream goes on reading it before it ends the call.
REFUSAL_GRACE_S = 0.2


async def refused_write_stream(
    host: StateMachineHost[Any, Any],
    request_iterator: AsyncIterator[Any],
    context: grpc.aio.ServicerContext[Any, Any],
) -> bool:
    """For a write stream handler (SubmitCommands, SubmitOrders) on a replica: when the host takes no
    writes (a follower: NOT_LEADER; a failed writer: WRITER_FAILED), end the call with that status and
    return True, before anything of the stream reaches the host (a follower must not count commands as
    queued that it never applies, and no resume point is reported from a machine that may be ahead of
    the journal). The first request is read first, then whatever the client sends within
    REFUSAL_GRACE_S more (dropped: the client library sends it again to the leader), or until it ends
    its stream: a status that reaches a client whose write is still under way becomes INTERNAL
    ("Internal error from Core", grpc aio overwrites the call's status when a write fails), not the
    refusal (seen under load with a second request 50 ms after the first)."""
    refusal = host.write_refusal()
    if refusal is None:
        return False
    requests = request_iterator.__aiter__()
    with contextlib.suppress(StopAsyncIteration, TimeoutError):
        await requests.__anext__()
        loop = asyncio.get_running_loop()
        until = loop.time() + REFUSAL_GRACE_S
        while (left := until - loop.time()) > 0:
            await asyncio.wait_for(requests.__anext__(), left)
    await abort(context, refusal)
    return True


class Deposed(RuntimeError):
    """The leader lost its leadership (the process stops; restarted, it follows)."""


class Replica:
    """The shard's election for one replica, and what it does when elected or deposed. `shard` is
    the election's name (the resolver name clients dial); the host's name is its journal's."""

    def __init__(
        self,
        shard: str,
        host: StateMachineHost[Any, Any],
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

"""Snapshots in cluster mode (services.cluster.snapshots.ReplicaSnapshots) on the real NATS, hosts in
one process: the leader shares its snapshots in the shard's object store bucket and prunes the
command stream below the second-newest shared one; a hot follower releases its in-memory copy of the
stream below its own snapshot; a replica that starts with an empty data directory after the stream was
pruned loads the newest shared snapshot, replays the stream after it and equals the leader; promoted,
it writes after the leader's last record (its writer loads only the pruned stream). A share that fails
leaves the stream unpruned past what was shared."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Iterator
from itertools import count
from pathlib import Path

import pytest

from services.clients.matching import MatchingClient
from services.cluster.journals import RoutedJournals
from services.cluster.replica import replica_snapshots
from services.cluster.servers import ZooKeeper
from services.cluster.snapshots import ReplicaSnapshots
from services.common.config import load_config
from services.common.host import HostOptions, StateMachineHost
from services.common.journal import FileJournals
from services.common.journal.jetstream import JetStreamJournals, decode_message
from services.common.security import process_security
from services.common.snapshots_jetstream import JetStreamSnapshotStore
from testkit.cluster import free_port
from testkit.replicas import replica_argv, write_shard_config
from tests.cluster_fixtures import nats_local, zookeeper  # noqa: F401
from tests.test_jetstream_host import CODEC, Summer
from tests.test_matching_replicas import (
    READY,
    SOURCE,
    Member,
    Shard,
    caught_up,
    leader_of,
    place,
    status,
    wait_for,
)
from tests.test_matching_replicas_host import until

_ids = count(1)
EVERY = 40


def replica(
    directory: Path, stream: JetStreamJournals, *, fork: bool = True
) -> StateMachineHost[bytes, Summer]:
    """A replica as services.matching runs one in cluster mode: commands from the shard's stream,
    its own event log, snapshots in its files and the shard's bucket."""
    return StateMachineHost(
        "replica",
        directory,
        restore=Summer.restore,
        codec=CODEC,
        options=HostOptions(snapshot_every=EVERY, fork_snapshots=fork),
        journals=RoutedJournals({"commands": stream}, FileJournals(directory)),
        snapshots=replica_snapshots(stream, directory),
    )


async def follower(directory: Path, stream: JetStreamJournals) -> StateMachineHost[bytes, Summer]:
    host = replica(directory, stream)
    await asyncio.to_thread(stream.ensure_stream, "commands")
    await host.start_following(await asyncio.to_thread(stream.open_reader, "commands"))
    return host


async def until_snapshot(host: StateMachineHost[bytes, Summer], seq: int) -> None:
    await until(lambda: host.snapshot_seq >= seq, f"a snapshot at {seq}")


@pytest.fixture
def service(nats_local: list[str]) -> Iterator[str]:  # noqa: F811
    name = f"snapshots-{os.getpid()}-{next(_ids)}"
    yield name
    cleanup = JetStreamJournals(nats_local, service=name)
    cleanup.delete_streams()  # the command stream and the snapshot bucket's stream
    cleanup.close()


def test_shared_snapshots_bound_the_stream_and_a_new_replica_starts_from_them(
    nats_local: list[str],  # noqa: F811
    service: str,
    tmp_path: Path,
) -> None:
    fa, fb, fc = (JetStreamJournals(nats_local, service=service) for _ in range(3))  # three "machines"
    try:

        async def scenario() -> None:
            leader = replica(tmp_path / "a", fa)
            await leader.start()
            hot = await follower(tmp_path / "b", fb)
            for i in range(1, 5 * EVERY + 1):
                await leader.submit(str(i).encode())
            total = leader.machine.total
            assert await leader.snapshot_now() == 5 * EVERY  # (periodic ones came before, forked)
            await until(lambda: hot.machine.applied_seq == 5 * EVERY, "the follower to catch up")
            await until_snapshot(hot, EVERY)

            # The leader's snapshots are in the bucket (the newest of them; a periodic one is skipped
            # while the one before is still being written and shared), the stream was pruned below
            # the second-newest and so was the leader's in-memory copy.
            shared = JetStreamSnapshotStore(fa).list()
            assert 2 <= len(shared) <= 3 and shared[-1] == 5 * EVERY, shared
            assert leader.commands.first_seq == shared[-2] + 1 > EVERY
            info = await asyncio.to_thread(fa.client.call, fa.client.js.stream_info(fa.stream("commands")))
            # (one record per message, after the stream's opening marker)
            assert info.state.first_seq == shared[-2] + 2, (shared, info.state)
            assert info.state.messages == 5 * EVERY - shared[-2], (shared, info.state)
            # The hot follower released its copy below its own snapshot (it keeps the last record).
            assert hot.commands.first_seq >= hot.snapshot_seq >= EVERY

            # A replica on a new machine: no files, the stream no longer holds command 1.
            fresh = await follower(tmp_path / "c", fc)
            assert fresh.snapshot_seq == 5 * EVERY  # restored from the bucket
            assert not list((tmp_path / "c" / "snapshots").glob("*.snap"))  # none of its own yet
            assert fresh.machine.total == total and fresh.machine.applied_seq == 5 * EVERY
            assert fresh.machine.state_hash() == leader.machine.state_hash()

            # The leader goes on; the new replica follows, then leads after it: its writer holds only
            # the pruned stream and continues after the leader's last record.
            for _ in range(10):
                await leader.submit(b"1")
            await until(lambda: fresh.machine.applied_seq == 5 * EVERY + 10, "the new replica to follow")
            await leader.stop()
            await fresh.promote()
            assert await fresh.submit(b"5") == total + 15
            assert fresh.commands.first_seq > 1
            await until(lambda: hot.machine.applied_seq == 5 * EVERY + 11, "the hot follower to follow it")
            assert hot.machine.state_hash() == fresh.machine.state_hash()
            await hot.stop()
            await fresh.stop()

        asyncio.run(scenario())
    finally:
        for f in (fa, fb, fc):
            f.close()


def test_a_snapshot_that_could_not_be_shared_keeps_the_stream(
    nats_local: list[str],  # noqa: F811
    service: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fa = JetStreamJournals(nats_local, service=service)
    try:

        async def scenario() -> None:
            leader = replica(tmp_path / "a", fa, fork=False)
            await leader.start()
            for _ in range(2 * EVERY):
                await leader.submit(b"1")
            assert await leader.snapshot_now() == 2 * EVERY  # after the periodic ones (inline here)
            store = leader.snapshots
            assert isinstance(store, ReplicaSnapshots)
            assert store.shared.list() == [EVERY, 2 * EVERY]
            floor = leader.commands.first_seq
            assert floor == EVERY + 1

            def unreachable(seq: int, data: bytes) -> list[int]:
                raise TimeoutError("nats: timeout")

            monkeypatch.setattr(store.shared, "put", unreachable)
            for _ in range(2 * EVERY):
                await leader.submit(b"1")
            assert await leader.snapshot_now() == 4 * EVERY
            # Local snapshots were taken; nothing new was shared, so nothing more was pruned.
            assert store.local.list()[-1] == 4 * EVERY
            assert leader.commands.first_seq == floor
            monkeypatch.undo()
            await leader.submit(b"1")
            assert await leader.snapshot_now() == 4 * EVERY + 1
            assert store.shared.list()[-1] == 4 * EVERY + 1
            assert leader.commands.first_seq == 2 * EVERY + 1
            await leader.stop()

        asyncio.run(scenario())
    finally:
        fa.close()


@pytest.mark.slow
def test_a_replica_process_with_an_empty_data_directory_starts_from_the_shared_snapshot(
    tmp_path: Path,
    zookeeper: ZooKeeper,  # noqa: F811
    nats_local: list[str],  # noqa: F811
) -> None:
    """Processes (python -m services.matching in cluster mode) with `snapshot_every = 50`: after 300
    commands the leader has shared its snapshots and pruned the stream; a third replica started with
    an empty data directory restores the newest shared snapshot, replays the rest, equals the leader
    (state hash) and, the leader killed, the two survivors elect one that goes on."""
    name = f"matching-s{os.getpid()}x{next(_ids)}"
    addresses = {m: f"127.0.0.1:{free_port()}" for m in ("a", "b", "c")}
    config_path = write_shard_config(
        tmp_path / "exchange.toml", name, addresses["a"], settings=["snapshot_every = 50"]
    )
    security = process_security(load_config(config_path), "admin")
    shard = Shard(name, security, zookeeper.hosts, nats_local)
    for m, address in addresses.items():
        argv = replica_argv(
            config_path, name, m, address, tmp_path / m, zk_hosts=zookeeper.hosts, nats=nats_local
        )
        shard.members[m] = Member(m, address, tmp_path / m, argv)
    fresh = shard.members["c"]
    resolver = shard.resolver()
    journals = JetStreamJournals(nats_local, service=name)
    try:
        for m in ("a", "b"):
            shard.members[m].start()
        for m in ("a", "b"):
            wait_for(lambda m=m: READY in shard.members[m].log, 30, f"replica {m} to serve")
        leader = leader_of(shard, resolver)

        async def load(first: int, last: int) -> None:
            async with MatchingClient.resolve(resolver, name, security=shard.writer(), timeout=15) as c:
                for seq in range(first, last + 1, 10):
                    assert (
                        await c.submit_commands(SOURCE, [place(i) for i in range(seq, seq + 10)]) == seq + 9
                    )

        asyncio.run(load(1, 300))
        wait_for(lambda: leader.log.count('"shared":true') >= 3, 20, "the leader to share 3 snapshots")
        shared = JetStreamSnapshotStore(journals).list()
        js, stream = journals.client.js, journals.stream("commands")
        info = journals.client.call(js.stream_info(stream))
        first_record, _ = decode_message(
            journals.client.call(js.get_msg(stream, info.state.first_seq)).data or b""
        )
        assert len(shared) >= 2 and first_record > 50, (shared, first_record)  # pruned below a snapshot

        fresh.start()
        wait_for(lambda: READY in fresh.log, 30, "the new replica to serve")
        assert '"msg":"restoring the shared snapshot"' in fresh.log
        lead = asyncio.run(status(leader.address, security))
        asyncio.run(caught_up(fresh.address, security, lead.event_sequence))
        got = asyncio.run(status(fresh.address, security))
        assert got.state_hash == lead.state_hash and got.applied_sequence == lead.applied_sequence == 300

        assert leader.proc is not None
        leader.proc.send_signal(signal.SIGKILL)
        leader.proc.wait()
        survivors = [r for r in shard.members.values() if r is not leader]
        asyncio.run(load(301, 340))
        now = leader_of(
            Shard(name, security, zookeeper.hosts, nats_local, {r.name: r for r in survivors}), resolver
        )
        lead = asyncio.run(status(now.address, security))
        assert lead.applied_sequence == 340
        for r in survivors:
            asyncio.run(caught_up(r.address, security, lead.event_sequence))
            assert asyncio.run(status(r.address, security)).state_hash == lead.state_hash
    finally:
        resolver.close()
        for member in shard.members.values():
            member.stop()
        journals.delete_streams()
        journals.close()

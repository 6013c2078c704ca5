"""The host's follower mode on the real NATS (in one process, fast): a follower applies the leader's
replicated command journal as it is written (machine and event log equal to the leader's, byte for
byte, events published to its streams), refuses writes with NOT_LEADER, and once promoted writes
after the leader's last record and fences the old leader, which fail-stops on its next write.
And the client library's redirect of a unary call refused with NOT_LEADER (in-process servers).
The processes, ZooKeeper and the client library's SubmitCommands are in
tests/test_matching_replicas.py."""

from __future__ import annotations

import asyncio
import json
import os
from itertools import count
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2
from nats.js.api import StreamConfig

from services.clients.errors import ClientError
from services.clients.matching import MatchingClient
from services.clients.resolver import StaticResolver
from services.cluster.journals import RoutedJournals
from services.common import rpc
from services.common.errors import FailedPrecondition, Reason
from services.common.host import HostOptions, StateMachineHost
from services.common.journal import FencedError, FileJournals
from services.common.journal.jetstream import JetStreamJournals, encode_message
from tests.cluster_fixtures import nats_local  # noqa: F401
from tests.test_jetstream_host import CODEC, Summer

_ids = count(1)


def replica(directory: Path, stream: JetStreamJournals, every: int = 0) -> StateMachineHost[bytes, Summer]:
    return StateMachineHost(
        "replica",
        directory,
        restore=Summer.restore,
        codec=CODEC,
        options=HostOptions(snapshot_every=every, fork_snapshots=False),
        journals=RoutedJournals({"commands": stream}, FileJournals(directory)),
        retention_floor=lambda: 0,
    )


async def until(cond: object, what: str, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not (callable(cond) and cond()):
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


def test_a_follower_stays_hot_refuses_writes_and_takes_over_fencing_the_old_leader(
    nats_local: list[str],  # noqa: F811
    tmp_path: Path,
) -> None:
    service = f"replica-{os.getpid()}-{next(_ids)}"
    fa = JetStreamJournals(nats_local, service=service)  # two "processes"
    fb = JetStreamJournals(nats_local, service=service)
    try:

        async def scenario() -> None:
            leader = replica(tmp_path / "a", fa)
            leader_failures: list[BaseException] = []
            leader.on_failure.append(leader_failures.append)
            await leader.start()
            assert [await leader.submit(b"1") for _ in range(3)] == [1, 2, 3]

            fb.ensure_stream("commands")
            follower = replica(tmp_path / "b", fb, every=30)  # it snapshots as it follows
            follower.leader_address = lambda: "127.0.0.1:7001"
            await follower.start_following(await asyncio.to_thread(fb.open_reader, "commands"))
            assert follower.following and follower.machine.total == 3  # replayed what was there
            seen: list[tuple[int, bytes]] = []

            async def stream() -> None:
                async for chunk in follower.follow_events(1):
                    seen.extend(chunk)

            reader = asyncio.create_task(stream())
            await leader.submit_batch([b"2"] * 50)
            await asyncio.gather(*(leader.submit(b"5") for _ in range(20)))
            await until(lambda: follower.machine.applied_seq == 73, "the follower to apply 73 commands")
            assert follower.machine.snapshot() == leader.machine.snapshot()
            assert follower.snapshot_seq >= 30  # its own, at a cut between chunks
            assert follower.snapshots.latest() is not None
            assert follower.events.read(1, max_records=100) == leader.events.read(1, max_records=100)
            await until(lambda: len(seen) == 73, "the follower's stream to publish 73 events")
            assert seen == leader.events.read(1, max_records=100)

            with pytest.raises(FailedPrecondition) as refused:
                await follower.submit(b"100")
            assert refused.value.reason == Reason.NOT_LEADER
            assert refused.value.metadata == {"leader": "127.0.0.1:7001", "shard": "replica"}
            assert follower.machine.total == leader.machine.total == 3 + 100 + 100

            # The leader goes on (the follower may lag), then is frozen: the follower takes over.
            assert await leader.submit(b"7") == 210
            await follower.promote()
            assert not follower.following
            assert follower.machine.applied_seq == 74 and follower.machine.total == 210
            assert await follower.submit(b"1") == 211
            assert follower.events.read(75) == [(75, b"211")]
            await until(lambda: seen and seen[-1][0] == 75, "the new leader's stream to go on")
            assert [s for s, _ in seen] == list(range(1, 76))  # no gap, no duplicate

            # The old leader wakes and writes: the stream refuses it, it fail-stops.
            with pytest.raises(Exception):  # noqa: B017 - refused (WRITER_FAILED after FencedError)
                await leader.submit(b"1000")
            await until(lambda: bool(leader_failures), "the old leader to fail-stop")
            assert isinstance(leader_failures[0], FencedError), leader_failures
            assert await follower.submit(b"1") == 212
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
            await follower.stop(snapshot=False)
            await leader.stop(snapshot=False)

        asyncio.run(scenario())
        check = JetStreamJournals(nats_local, service=service)
        j = check.open("commands")
        payloads = [p for _, p in j.read(1, max_records=1000)]
        assert len(payloads) == 76 and b"1000" not in payloads
        check.close()
    finally:
        fa.delete_streams()
        fa.close()
        fb.close()


class _Health(grpc.GenericRpcHandler):  # type: ignore[misc]
    """grpc.health.v1 Check: SERVING, or refused as a follower naming `leader`; counts calls."""

    def __init__(self, leader: str | None) -> None:
        self.leader = leader
        self.calls = 0

    def service(self, details: object) -> object:
        async def check(request: object, context: grpc.aio.ServicerContext[object, object]) -> object:
            self.calls += 1
            if self.leader is not None:
                refusal = FailedPrecondition("a follower", Reason.NOT_LEADER, {"leader": self.leader})
                await rpc.abort(context, refusal)
            return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)

        return grpc.unary_unary_rpc_method_handler(
            check,
            request_deserializer=health_pb2.HealthCheckRequest.FromString,
            response_serializer=health_pb2.HealthCheckResponse.SerializeToString,
        )


def test_a_unary_call_refused_by_a_follower_is_redirected_to_the_leader() -> None:
    async def body() -> None:
        servers = []
        handlers = []
        addresses = []
        for leader in ("", None):  # the follower's address is filled in below
            server = grpc.aio.server()
            handler = _Health(leader)
            server.add_generic_rpc_handlers([handler])
            addresses.append(f"127.0.0.1:{server.add_insecure_port('127.0.0.1:0')}")
            await server.start()
            servers.append(server)
            handlers.append(handler)
        follower, leader = handlers
        follower.leader = addresses[1]
        try:
            resolver = StaticResolver({"matching-0": addresses[0]})
            async with MatchingClient.resolve(resolver, "matching-0") as c:
                assert await c.health() == health_pb2.HealthCheckResponse.SERVING
            assert (follower.calls, leader.calls) == (1, 1)
            assert resolver.address("matching-0") == addresses[1]  # later calls go there at once
            async with MatchingClient.at(addresses[0]) as c:  # a fixed address: no redirect
                with pytest.raises(ClientError) as refused:
                    await c.health()
            assert refused.value.reason == "NOT_LEADER"
            assert refused.value.metadata["leader"] == addresses[1]
            follower.leader = ""  # no leader known: retried within the deadline, then raised
            resolver = StaticResolver({"matching-0": addresses[0]})
            async with MatchingClient.resolve(resolver, "matching-0", timeout=0.5) as c:
                with pytest.raises(ClientError) as refused:
                    await c.health()
            # (the refusal, or the deadline when it ran out during the last try)
            assert refused.value.code in (
                grpc.StatusCode.FAILED_PRECONDITION,
                grpc.StatusCode.DEADLINE_EXCEEDED,
            )
            assert follower.calls > 3
        finally:
            for server in servers:
                await server.stop(0)

    asyncio.run(body())


def test_fence_takes_the_stream_over_and_refuses_after_another_writer(
    nats_local: list[str],  # noqa: F811
) -> None:
    """fence(): a stream loaded empty while its creator's opening marker was still on its way (a new
    R3 stream elects its leader first) is still taken over; one another writer appended to after
    this handle loaded it is not (FencedError, the handle failed for good)."""
    service = f"fence-{os.getpid()}-{next(_ids)}"
    fb = JetStreamJournals(nats_local, service=service)
    fc = JetStreamJournals(nats_local, service=service)
    try:
        stream, subject = fb.stream("commands"), fb.subject("commands")
        description = json.dumps({"journal": "commands", "start_seq": 1})
        config = StreamConfig(name=stream, subjects=[subject], description=description)
        fb.client.call(fb.client.js.add_stream(config))  # created, its marker not stored yet
        b = fb.open("commands")
        assert b.last_seq == 0
        fb.client.call(fb.client.js.publish(subject, encode_message(1, [])))  # the marker lands
        assert b.fence() == 2
        b.write_after(0, [b"b1"])
        assert b.sync() == 1
        c = fc.open("commands")  # loads b's record; b writes again before c takes over
        b.write_after(1, [b"b2"])
        assert b.sync() == 2
        with pytest.raises(FencedError):
            c.fence()
        with pytest.raises(FencedError):
            c.write_after(c.last_seq, [b"c1"])
        assert [p for _, p in fb.open_reader("commands").read(1)] == [b"b1", b"b2"]
    finally:
        fb.delete_streams()
        fb.close()
        fc.close()

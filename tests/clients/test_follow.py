"""follow_events against in-process fake streams: a server that dies mid-stream and comes back on the
same port, resends, a stream that ends, OUT_OF_RANGE, a gap, a caller's checkpoint, read-ahead, and a
user stream whose sequences are not contiguous."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from exchange.v1 import accounts_service_pb2_grpc as agrpc
from exchange.v1 import events_pb2 as ev

from services.clients import (
    AccountsClient,
    EventBatch,
    EventFollower,
    EventGap,
    EventsOutOfRange,
    MatchingClient,
    StaticResolver,
    follow_events,
)
from services.clients.channels import Connection
from tests.clients.fakes import AccountEventServer, EventServer, matching_events, serve

N = 300


def run(body: Callable[[], Awaitable[None]], timeout: float = 60) -> None:
    async def main() -> None:
        await asyncio.wait_for(body(), timeout)

    asyncio.run(main())


async def collect(
    batches: Any, until: int, sink: list[int] | None = None, *, contiguous: bool = True
) -> list[int]:
    seen: list[int] = [] if sink is None else sink
    async with contextlib.aclosing(batches):
        async for batch in batches:
            assert isinstance(batch, EventBatch)
            if contiguous:
                assert [e.sequence for e in batch.events] == list(range(batch.first, batch.last + 1))
            seen.extend(e.sequence for e in batch.events)
            if batch.last >= until:
                break
    return seen


async def restart_when_dead(fake: EventServer, times: int, pause: float = 0.3) -> None:
    """The server process dies (stopped at once, streams cut) and comes back on the same port."""
    for _ in range(times):
        await fake.died.wait()
        while fake.server is not None:
            await asyncio.sleep(0.01)
        await asyncio.sleep(pause)  # down for a while: reconnects fail with UNAVAILABLE
        fake.die_after = fake.sent + 9 if _ < times - 1 else 0
        await fake.start()


def test_resumes_after_a_server_restart_without_gap_or_duplicate(caplog: pytest.LogCaptureFixture) -> None:
    async def body() -> None:
        fake = EventServer(matching_events(N), per_response=7)
        fake.die_after = 5
        fake.resend = 4  # each new stream starts a few events early: dropped, not yielded twice
        await fake.start()
        client = MatchingClient.at(fake.address, name="matching-0")
        restarts = asyncio.create_task(restart_when_dead(fake, 3))
        try:
            follower = EventFollower(client.events(max_batch=7), backoff_max_s=0.2)
            with caplog.at_level(logging.INFO, logger="services.clients"):
                seen = await collect(follower.batches(1), N)
            assert seen == list(range(1, N + 1))
            # every reconnection started right after the last event yielded
            assert fake.requests[0] == 1 and fake.requests == sorted(fake.requests)
            assert len(set(fake.requests)) == 4, fake.requests  # the first stream and one per restart
            assert follower.connects > 4  # and some while the server was down
            messages = [r.getMessage() for r in caplog.records]
            assert messages.count("event stream back") == 3
            down = [r for r in caplog.records if r.getMessage() == "event stream down; retrying"]
            assert {r.levelno for r in down} <= {logging.WARNING, logging.DEBUG}
            assert len([r for r in down if r.levelno == logging.WARNING]) == 3  # one line per outage
            assert all(r.__dict__["source"] == "matching-0" for r in down)
            await restarts
        finally:
            restarts.cancel()
            await client.close()
            await fake.stop()

    run(body)


def test_a_stream_that_ends_is_followed_again() -> None:
    async def body() -> None:
        fake = EventServer(matching_events(100), per_response=10)
        fake.end_after = 3
        await fake.start()
        client = MatchingClient.at(fake.address)
        try:
            seen = await collect(follow_events(client.events(), 1, backoff_initial_s=0.01), 100)
            assert seen == list(range(1, 101))
            assert fake.requests == [1, 31, 61, 91]
        finally:
            await client.close()
            await fake.stop()

    run(body)


@pytest.mark.parametrize("kind", ["async", "sync"])
def test_the_callers_checkpoint_decides_where_each_stream_starts(kind: str) -> None:
    """history stores events in its database and resumes from what it stored: the follower asks the
    checkpoint callback (sync or async) at each (re)connection."""

    async def body() -> None:
        fake = EventServer(matching_events(120), per_response=10)
        await fake.start()
        client = MatchingClient.at(fake.address)
        stored: list[int] = []

        def read() -> int:
            return stored[-1] if stored else 40  # the database already holds 1..40

        async def read_async() -> int:
            await asyncio.sleep(0)
            return read()

        try:
            follower = EventFollower(
                client.events(), checkpoint=read_async if kind == "async" else read, backoff_initial_s=0.01
            )
            while not stored or stored[-1] < 120:
                async for batch in follower.batches():
                    # only the first 5 events of the batch could be stored: out, and follow again
                    stored.extend(e.sequence for e in batch.events[:5])
                    break
            assert stored == list(range(41, 121))
            assert fake.requests == list(range(41, 120, 5))
            # a stream that ends also resumes from the checkpoint (not from what was yielded)
            fake.end_after = 1
            stored[:] = [100]
            got: list[int] = []
            async for batch in follower.batches():
                got.append(batch.first)
                stored.append(batch.first)  # stores one event of each batch
                if len(got) == 3:
                    break
            assert got == [101, 102, 103]
        finally:
            await client.close()
            await fake.stop()

    run(body)


def test_out_of_range_is_raised_after_one_error_line_and_nothing_is_skipped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def body() -> None:
        fake = EventServer(matching_events(50))
        fake.first_kept = 20
        await fake.start()
        client = MatchingClient.at(fake.address)
        seen: list[int] = []
        try:
            with pytest.raises(EventsOutOfRange) as info:
                await collect(follow_events(client.events(), 1), 50, seen)
            assert seen == []
            assert info.value.reason == "SEQUENCE_OUT_OF_RANGE"
            assert info.value.from_sequence == 1
            assert fake.requests == [1]  # not retried, not skipped ahead
            errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
            assert len(errors) == 1 and "no longer has the events" in errors[0].getMessage()
        finally:
            await client.close()
            await fake.stop()

    run(body)


def test_a_gap_in_a_contiguous_stream_is_raised() -> None:
    async def body() -> None:
        fake = EventServer(matching_events(60), per_response=10)
        fake.skip = 25
        await fake.start()
        client = MatchingClient.at(fake.address)
        seen: list[int] = []
        try:
            with pytest.raises(EventGap) as info:
                await collect(follow_events(client.events(), 1), 60, seen)
            assert seen == list(range(1, 21))
            assert info.value.metadata == {"expected": "25", "got": "26"}
            assert info.value.reason == "SEQUENCE_GAP"
            # check_gaps=False hands the events on (a caller whose store checks them itself)
            got = await collect(follow_events(client.events(), 21, check_gaps=False), 60, contiguous=False)
            assert 25 not in got and got[:5] == [21, 22, 23, 24, 26]
        finally:
            await client.close()
            await fake.stop()

    run(body)


def test_read_ahead_batches_take_everything_queued() -> None:
    async def body() -> None:
        fake = EventServer(matching_events(2000), per_response=10)
        await fake.start()
        client = MatchingClient.at(fake.address)
        sizes: list[int] = []
        try:
            follower = EventFollower(client.events(), prefetch=64, max_events=200)
            seen: list[int] = []
            async for batch in follower.batches(1):
                sizes.append(len(batch))
                seen.extend(e.sequence for e in batch.events)
                await asyncio.sleep(0.01)  # a slow consumer: responses pile up meanwhile
                if batch.last >= 2000:
                    break
            assert seen == list(range(1, 2001))
            assert max(sizes) == 200 and len(sizes) < 100
        finally:
            await client.close()
            await fake.stop()

    run(body)


def test_user_events_resume_after_the_last_one_seen() -> None:
    """A user's stream carries accounts sequences with gaps between them (other users' events)."""

    async def body() -> None:
        events = [ev.AccountEvent(sequence=i, user_id=1 if i % 3 == 0 else 2) for i in range(1, 61)]
        fake = AccountEventServer(events, fail_after=4)
        server, address = await serve(agrpc.add_AccountsServiceServicer_to_server, fake)
        client = AccountsClient.at(address)
        try:
            seen: list[int] = []
            async for batch in follow_events(client.user_events(1), 1, backoff_initial_s=0.01):
                seen.extend(e.sequence for e in batch.events)
                if batch.last >= 60:
                    break
            assert seen == list(range(3, 61, 3))
            assert fake.requests == [1, 13]
        finally:
            await client.close()
            await server.stop(0)

    run(body)


def test_a_follower_moves_with_its_connection_when_the_resolver_names_another_address() -> None:
    """The resolver names a new leader while a stream is open on the old one, which stays silent (a
    frozen or deposed leader): the old channel is closed after MOVED_GRACE_S, and the follower reads
    on from the new address (not ended as if cancelled, not stuck until keepalive gives up)."""

    async def body() -> None:
        events = matching_events(60)
        old, new = EventServer(events[:20], per_response=5), EventServer(events, per_response=5)
        await old.start()
        await new.start()
        resolver = StaticResolver({"matching-0": old.address})
        client = MatchingClient(Connection("matching-0", resolver), owns_connection=True)
        try:
            follower = EventFollower(client.events(max_batch=5), backoff_max_s=0.2)
            batches = follower.batches(1)
            seen: list[int] = []
            async for batch in batches:
                seen += [int(e.sequence) for e in batch.events]
                if seen[-1] == 20:  # all the old one has; its stream stays open and silent
                    resolver.set("matching-0", new.address)
                if seen[-1] == 60:
                    break
            await batches.aclose()
            assert seen == list(range(1, 61))
            assert new.requests == [21]  # the follower went on where it was, at the new address
        finally:
            await client.close()
            await old.stop()
            await new.stop()

    run(body, timeout=20)

"""services.accounts.user_events: a user's events caught up from the log, then live, without gaps or
repeats; a subscriber too slow for the live feed is told to resubscribe."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from exchange.v1 import events_pb2 as ev

from services.accounts.user_events import UserEventHub
from services.common.errors import OutOfRange, Reason, Unavailable


class FakeHost:
    """The host as the hub sees it: a durable event log, and the hook it publishes through."""

    def __init__(self) -> None:
        self.on_events: list = []  # type: ignore[type-arg]
        self.log: list[bytes] = []

    @property
    def durable_event_seq(self) -> int:
        return len(self.log)

    def check_event_from(self, seq: int) -> None:
        if seq > len(self.log) + 1:
            raise OutOfRange("past the end", Reason.SEQUENCE_OUT_OF_RANGE)

    async def follow_events(self, seq: int, max_records: int) -> AsyncIterator[list[tuple[int, bytes]]]:
        while True:
            while seq > len(self.log):
                await asyncio.sleep(0.001)
            batch = [(s, self.log[s - 1]) for s in range(seq, min(len(self.log), seq + max_records - 1) + 1)]
            seq = batch[-1][0] + 1
            yield batch

    def commit(self, users: list[int]) -> None:
        first = len(self.log) + 1
        records = [
            ev.AccountEvent(source="accounts-0", sequence=first + i, user_id=u).SerializeToString()
            for i, u in enumerate(users)
        ]
        self.log.extend(records)
        for hook in self.on_events:
            hook(first, records, users)


def sequences(batches: list[list[bytes]]) -> list[int]:
    return [ev.AccountEvent.FromString(r).sequence for b in batches for r in b]


def test_catch_up_then_live_without_gaps_or_repeats() -> None:
    async def main() -> list[int]:
        h = FakeHost()
        hub = UserEventHub(h)
        h.commit([1, 2, 1, 1])  # 1, 3, 4 are user 1's
        got: list[list[bytes]] = []

        async def follow() -> None:
            async for batch in hub.follow(1, 2):
                got.append(batch)
                if sequences(got)[-1] >= 8:
                    return

        task = asyncio.create_task(follow())
        await asyncio.sleep(0.05)
        h.commit([2, 1, 3, 1])  # 6 and 8
        await asyncio.wait_for(task, 5)
        assert hub.subscribers == {}  # unsubscribed when the stream ended
        return sequences(got)

    assert asyncio.run(main()) == [3, 4, 6, 8]


def test_from_zero_is_only_what_comes_and_past_the_end_is_out_of_range() -> None:
    async def main() -> list[int]:
        h = FakeHost()
        hub = UserEventHub(h)
        h.commit([1, 1])
        with pytest.raises(OutOfRange):
            async for _ in hub.follow(1, 4):
                pass
        got: list[list[bytes]] = []

        async def follow() -> None:
            async for batch in hub.follow(1, 0):
                got.append(batch)
                return

        task = asyncio.create_task(follow())
        await asyncio.sleep(0.02)
        h.commit([1])
        await asyncio.wait_for(task, 5)
        return sequences(got)

    assert asyncio.run(main()) == [3]


def test_a_subscriber_too_slow_for_the_live_feed_is_told_to_resubscribe() -> None:
    async def main() -> BaseException:
        h = FakeHost()
        hub = UserEventHub(h, queue_size=2)
        stream = hub.follow(1, 0)
        first = asyncio.ensure_future(stream.__anext__())
        await asyncio.sleep(0.01)  # subscribed, waiting for the live feed
        for _ in range(4):  # more batches than the subscriber's queue holds, none read
            h.commit([1])
        with pytest.raises(Unavailable) as info:
            await first
            while True:
                await stream.__anext__()
        assert hub.subscribers == {}
        return info.value

    err = asyncio.run(main())
    assert err.reason == Reason.SLOW_CONSUMER and "resubscribe" in err.message

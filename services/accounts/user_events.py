"""Per-user accounts event streams, host side: durable AccountEvent records fanned out to the
subscribers of their user, and a user's stream from a sequence (caught up from the event log, then
live). Knows the host and the records, not gRPC (services.accounts.service formats the stream)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from exchange.v1 import events_pb2 as ev

from services.common.errors import Reason, Unavailable

Feed = asyncio.Queue[list[tuple[int, bytes]] | None]  # (sequence, record)s; None: too slow, dropped


class UserEventHub:
    """Fans durable accounts events out to per-user subscribers (routed by the user id the machine
    reports with each event, so nothing is parsed here)."""

    def __init__(self, host: Any, *, queue_size: int = 1000) -> None:
        self.host = host
        self.queue_size = queue_size
        self.subscribers: dict[int, set[Feed]] = {}
        host.on_events.append(self._publish)

    def subscribe(self, user: int) -> Feed:
        q: Feed = asyncio.Queue(maxsize=self.queue_size)
        self.subscribers.setdefault(user, set()).add(q)
        return q

    def unsubscribe(self, user: int, q: Feed) -> None:
        subs = self.subscribers.get(user)
        if subs is not None:
            subs.discard(q)
            if not subs:
                del self.subscribers[user]

    def _publish(self, first: int, records: list[bytes], users: list[int]) -> None:
        if not self.subscribers or not users:
            return
        subscribers = self.subscribers
        per_user: dict[int, list[tuple[int, bytes]]] = {}
        for i, user in enumerate(users):
            if user in subscribers:
                per_user.setdefault(user, []).append((first + i, records[i]))
        for user, items in per_user.items():
            for q in list(subscribers.get(user, ())):
                try:
                    q.put_nowait(items)
                except asyncio.QueueFull:  # too slow: tell it to resubscribe from its last sequence
                    while not q.empty():
                        q.get_nowait()
                    q.put_nowait(None)
                    self.unsubscribe(user, q)

    async def follow(self, user: int, from_seq: int) -> AsyncIterator[list[bytes]]:
        """`user`'s durable events in order, as batches of records: from `from_seq` (0: only what
        comes from now on; OUT_OF_RANGE past the end + 1), caught up from the event log, then live.
        A subscriber that falls behind the live feed gets UNAVAILABLE (resubscribe from the last
        sequence received)."""
        host = self.host
        queue = self.subscribe(user)
        sent = host.durable_event_seq  # the live feed delivers what comes after this
        try:
            if from_seq:
                host.check_event_from(from_seq)
            if from_seq and from_seq <= sent:
                # Catch up from the log up to `sent`, then switch to the live feed.
                live_from = sent + 1
                async for records in host.follow_events(from_seq, max_records=5000):
                    mine = [
                        p
                        for s, p in records
                        if s < live_from and ev.AccountEvent.FromString(p).user_id == user
                    ]
                    if mine:
                        yield mine
                    if records[-1][0] >= live_from - 1:
                        break
            while True:
                items = await queue.get()
                if items is None:
                    raise Unavailable(
                        "subscriber too slow; resubscribe from your last sequence", 100, Reason.SLOW_CONSUMER
                    )
                fresh = [p for s, p in items if s > sent]
                if fresh:
                    sent = items[-1][0]
                    yield fresh
        finally:
            self.unsubscribe(user, queue)

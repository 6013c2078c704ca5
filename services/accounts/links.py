"""Accounts' links to the matching shards.

Forwarder (outbox → shard): sends the shard's commands in journal order over MatchingService.
SubmitCommands. On (re)connect the shard tells the last sequence it applied from this source; the
forwarder resends from there, first from the journal (after a restart) and then from memory. Matching
ignores anything it already applied, so a resend is harmless: exactly once. Each command carries the
sequence of the one before it for that shard (previous_sequence, see services.accounts.machine) and
matching refuses a gap, so the link keeps what it sends strictly increasing and gapless: it starts
right after what the shard says it applied (even when that is less than it acknowledged before: the
shard is the authority, and the journal still holds everything after it), never sends a command twice
in one session and never drops one the shard has not applied.

SettlementFeed (shard → accounts): follows MatchingService.StreamEvents from the last settled event and
turns each response into a journaled SettleMatchingEvents command. Accounts sharded by user: the feed of
shard i of N keeps only the events concerning its users (own_events) and journals the range it covers
(first_sequence..last_sequence), so a shard does not journal and settle its peers' events.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable
from typing import Any

import grpc
from exchange.v1 import events_pb2 as ev
from exchange.v1 import matching_service_pb2 as mpb
from prometheus_client import Gauge

from services.accounts.machine import outbox_commands
from services.clients import EventFollower, MatchingClient
from services.clients.channels import Connection
from services.clients.errors import EventGap, EventsOutOfRange
from services.common.host import StateMachineHost
from services.common.journal import JournalError
from services.common.markets import MarketCatalog
from services.common.rpc import channel
from services.common.wire import repeated_messages

log = logging.getLogger(__name__)

OUTBOX = Gauge(
    "exchange_accounts_outbox", "Commands accepted but not yet acknowledged by the shard", ["shard"]
)
ACKED = Gauge("exchange_accounts_forwarded_sequence", "Last command acknowledged by the shard", ["shard"])
SETTLED = Gauge("exchange_accounts_settle_enqueued", "Last matching event queued for settlement", ["shard"])

SEND_BATCH = 2000
ADDRESS_POLL_S = 0.05  # how often a link waiting to reconnect looks for a new address of its shard


def _identity(data: bytes) -> bytes:
    return data


class Forwarder:
    def __init__(
        self,
        shard: str,
        address: str | Callable[[], str],
        host: StateMachineHost[Any, Any],
        source: str,
        catalog: MarketCatalog,
    ) -> None:
        self.shard = shard
        # The shard's address, or what tells it at each session (cluster mode: the shard's leader).
        self._address = address
        self.host = host
        self.source = source
        self.catalog = catalog
        # Serialized MatchingCommand messages by accounts sequence.
        self.queued: deque[tuple[int, bytes]] = deque()  # not yet sent on this link
        self.inflight: deque[tuple[int, bytes]] = deque()  # sent, not yet acknowledged
        self.acked = 0
        self.connected = False
        self._more = asyncio.Event()
        self._stop = False

    @property
    def address(self) -> str:
        a = self._address
        return a() if callable(a) else a

    @property
    def lag(self) -> int:
        """Commands accepted for this shard and not yet acknowledged by it."""
        return len(self.queued) + len(self.inflight)

    def push(self, seq: int, cmd: bytes) -> None:
        """A durable command for this shard (called after each commit, in order). One the link already
        holds is ignored: a session that started between a commit's fsync and its hand-over read it from
        the journal already."""
        tail = self.queued[-1][0] if self.queued else self.inflight[-1][0] if self.inflight else 0
        if seq <= tail or seq <= self.acked:
            return
        self.queued.append((seq, cmd))
        self._more.set()

    def _drop_acked(self, acked: int) -> None:
        self.acked = max(self.acked, acked)
        for q in (self.inflight, self.queued):
            while q and q[0][0] <= self.acked:
                q.popleft()
        OUTBOX.labels(self.shard).set(self.lag)
        ACKED.labels(self.shard).set(self.acked)

    def _from_journal(self, start: int, end: int) -> list[tuple[int, bytes]]:
        """This shard's commands numbered start..end, rebuilt from the durable accounts journal. A
        record forwards under its own number, and an amend of price and amount also under the number
        before it, so one record past `end` is read too (if durable)."""
        out: list[tuple[int, bytes]] = []
        limit = min(end + 1, self.host.durable_command_seq)
        seq = start
        while seq <= limit:
            records = self.host.read_commands(seq, max_records=2000)
            if not records:
                break
            for rseq, payload in records:
                if rseq > limit:
                    break
                cmd = ev.AccountsCommand.FromString(payload)
                for mseq, shard, mcmd in outbox_commands(self.source, rseq, cmd, self.catalog):
                    if shard == self.shard and start <= mseq <= end:
                        out.append((mseq, mcmd))
            seq = records[-1][0] + 1
        return out

    async def run(self) -> None:
        backoff = 0.05
        while not self._stop:
            dialed = self.address
            try:
                await self._session()
                backoff = 0.05
            except (grpc.aio.AioRpcError, ConnectionError) as exc:
                code = exc.code() if isinstance(exc, grpc.aio.AioRpcError) else None
                log.warning(
                    "shard link down", extra={"shard": self.shard, "code": str(code), "retry_s": backoff}
                )
            except JournalError as exc:  # the commands the shard misses are no longer in the journal
                log.error(
                    "cannot resend to the shard",
                    extra={
                        "shard": self.shard,
                        "acknowledged": self.acked,
                        "error": str(exc),
                        "retry_s": backoff,
                    },
                )
            self.connected = False
            if self._stop:
                return
            if await self._address_changes(dialed, backoff):
                backoff = 0.05  # a new leader (cluster mode): dial it now, not after the backoff
            else:
                backoff = min(backoff * 2, 2.0)

    async def _address_changes(self, dialed: str, pause: float) -> bool:
        """Wait `pause` seconds before the next session, or less: True as soon as the shard's address
        is no longer `dialed` (in cluster mode the resolver's watch names a new leader; checked every
        ADDRESS_POLL_S, a dictionary read)."""
        loop = asyncio.get_running_loop()
        until = loop.time() + pause
        while (left := until - loop.time()) > 0 and not self._stop:
            await asyncio.sleep(min(left, ADDRESS_POLL_S))
            if self.address != dialed:
                return True
        return False

    async def _session(self) -> None:
        async with channel(self.address) as ch:
            # Requests are assembled from serialized commands (SubmitCommandsRequest.commands = 2).
            call = ch.stream_stream(
                "/exchange.v1.MatchingService/SubmitCommands",
                request_serializer=_identity,
                response_deserializer=mpb.SubmitCommandsResponse.FromString,
            )()
            await call.write(mpb.SubmitCommandsRequest(source=self.source).SerializeToString())
            first = await call.read()
            if first is grpc.aio.EOF:
                raise ConnectionError("shard closed the stream")
            # Everything not acknowledged is sent again on this link, from right after what the shard
            # applied (it may say less than it acknowledged before only if it lost commands; resending
            # them heals it, skipping them would be a gap it refuses forever).
            self.queued.extendleft(reversed(self.inflight))
            self.inflight.clear()
            if first.acknowledged_sequence < self.acked:
                log.warning(
                    "shard applied less than it acknowledged",
                    extra={
                        "shard": self.shard,
                        "acknowledged": self.acked,
                        "applied": first.acknowledged_sequence,
                    },
                )
                self.acked = first.acknowledged_sequence
            self._drop_acked(first.acknowledged_sequence)
            self.connected = True
            log.info("shard link up", extra={"shard": self.shard, "acknowledged": self.acked})
            # After a restart memory holds only what was committed since; older commands come from
            # the journal.
            mem_first = self.queued[0][0] if self.queued else self.host.durable_command_seq + 1
            if self.acked + 1 < mem_first:
                backlog = self._from_journal(self.acked + 1, mem_first - 1)
                self.queued.extendleft(reversed(backlog))
                log.info("resending from journal", extra={"shard": self.shard, "commands": len(backlog)})
            reader = asyncio.create_task(self._read_acks(call))
            # The reader ending (the stream failed or closed) wakes the sender too: one event to wait
            # on, no task per wait.
            reader.add_done_callback(lambda _: self._more.set())
            try:
                while not self._stop:
                    if reader.done():
                        reader.result()  # raises the stream error
                        return
                    if not self.queued:
                        self._more.clear()
                        await self._more.wait()
                        continue
                    batch: list[bytes] = []
                    while self.queued and len(batch) < SEND_BATCH:
                        item = self.queued.popleft()
                        self.inflight.append(item)
                        batch.append(item[1])
                    await call.write(repeated_messages(2, batch))
            finally:
                reader.cancel()
                call.cancel()

    async def _read_acks(self, call: Any) -> None:
        while True:
            resp = await call.read()
            if resp is grpc.aio.EOF:
                raise ConnectionError("shard closed the stream")
            self._drop_acked(resp.acknowledged_sequence)

    def stop(self) -> None:
        self._stop = True
        self._more.set()


def own_events(source: str, shard: int, shards: int) -> Callable[[ev.MatchingEvent], bool]:
    """Whether a matching event concerns accounts shard `shard` of `shards` (named `source`): a trade
    with a side of one of its users, an order event of one of its users, the rejection of one of its
    commands; an event it cannot read is kept (the ledger quarantines it)."""

    def owns(e: ev.MatchingEvent) -> bool:
        kind = e.WhichOneof("event")
        if kind == "trade_executed":
            t = e.trade_executed
            return t.taker_user_id % shards == shard or t.maker_user_id % shards == shard
        if kind == "order_accepted":
            return e.order_accepted.order.user_id % shards == shard
        if kind == "order_done":
            return e.order_done.user_id % shards == shard
        if kind == "order_amended":
            return e.order_amended.user_id % shards == shard
        if kind == "command_rejected":
            return e.command_source == source
        return True

    return owns


class SettlementFeed:
    """Follows one shard's events from the last settled (or queued) event and journals each batch as
    a SettleMatchingEvents command (services.clients' EventFollower: resume from the checkpoint with
    backoff; OUT_OF_RANGE and gaps need an operator and are never skipped)."""

    def __init__(
        self,
        shard: str,
        address: str | Connection,
        host: StateMachineHost[Any, Any],
        settled: Callable[[], int],
        *,
        max_queue: int = 20_000,
        owns: Callable[[ev.MatchingEvent], bool] | None = None,
    ) -> None:
        self.shard = shard
        self.owns = owns  # accounts sharded by user: the events to journal (own_events); None = all
        self.connection = address if isinstance(address, Connection) else Connection.at(address, name=shard)
        self.host = host
        self.settled = settled
        self.max_queue = max_queue
        self.enqueued = 0
        self._stop = False
        self.follower = EventFollower(
            MatchingClient(self.connection).events(max_batch=2000, source=shard),
            checkpoint=lambda: max(self.settled(), self.enqueued),
            logger=log,
            log_extra={"shard": shard},
        )

    async def run(self) -> None:
        try:
            while not self._stop:
                batches = self.follower.batches()
                try:
                    async with contextlib.aclosing(batches):
                        async for batch in batches:
                            while self.host.queue_depth > self.max_queue and not self._stop:
                                await asyncio.sleep(0.002)
                            if self._stop:
                                return
                            cmd = ev.AccountsCommand()
                            cmd.settle.shard = self.shard
                            owns = self.owns
                            if owns is None:
                                cmd.settle.events.extend(batch.events)
                            else:
                                cmd.settle.first_sequence = batch.first
                                cmd.settle.last_sequence = batch.last
                                cmd.settle.events.extend(e for e in batch.events if owns(e))
                            self.host.enqueue_internal(cmd)
                            self.enqueued = batch.last
                            SETTLED.labels(self.shard).set(self.enqueued)
                except (EventsOutOfRange, EventGap) as exc:  # logged by the follower; needs an operator
                    log.error(
                        "cannot settle the shard's events; retrying in 10 s",
                        extra={"shard": self.shard, "reason": exc.reason, "error": exc.message},
                    )
                    await asyncio.sleep(10.0)
        finally:
            await self.connection.close()

    def stop(self) -> None:
        self._stop = True

"""Stream consumers: one per event source (each matching shard, and accounts), feeding HistoryStore.

The stream is followed with services.clients.follow (EventFollower): each (re)connection starts from the
checkpoint stored in the database + 1 (the follower's checkpoint callback reads it in the database
worker thread; never from memory), and resends at or below it are dropped. The follower reads ahead
(prefetch: a bounded queue of responses) while the database writes, and each batch it yields takes
everything queued (up to `batch_events`), written as ONE transaction with its checkpoint in the database
worker thread. So while a write runs, the next responses pile up and the next transaction takes them
all: the batches grow with the event rate, and a full queue pushes back on the stream (gRPC flow
control).

Failures: a stream that ends or fails (UNAVAILABLE while the upstream restarts) reconnects with
exponential backoff (in the follower). OUT_OF_RANGE (the upstream no longer keeps the events after our
checkpoint) is logged as an error by the follower (EventsOutOfRange) and retried slowly
(`out_of_range_retry_s`): it needs an operator, and skipping would lose rows. A transient database error
(connection lost, lock timeout: HistoryStore.is_transient) drops the session, is logged and retried with
the same backoff; the next session resumes from the stored checkpoint.

An event that cannot be stored (a value out of range for its column, a constraint the data breaks, a
gap or an event of another source: anything else an ingest raises; gaps are left to the store, which
names them) fails the same way on every retry,
so it is not retried fast: the consumer stores the events before it (the failing batch is split until
the first event that fails is found), then the source is in `failure` (StoreFailure: the sequence, a
one-line reason). That is logged once as one line, then as a short reminder at most every
`reminder_s`; exchange_history_store_failed{source} is 1 and `on_failure_change` is awaited (the app
then reports NOT_SERVING). The consumer keeps retrying every `store_failed_retry_s` from the stored
checkpoint, so it resumes by itself once the event can be stored (database or code fixed, upstream
corrected): then the failure is cleared, logged, and the gauge is 0 again. An unexpected error outside
an ingest (a bug) is handled the same way, its traceback logged once, and cleared by the next event
stored. Retries while failing log nothing more (DEBUG only).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal, TypeVar

import grpc
from prometheus_client import Gauge
from sqlalchemy.exc import DBAPIError

from services.clients import (
    NO_RETRY,
    AccountsClient,
    ClientError,
    EventsOutOfRange,
    MatchingClient,
)
from services.clients.channels import Connection
from services.common.consumers import (
    BACKOFF_MAX_S,
    BACKOFF_START_S,
    FailureMessages,
    FailureTracker,
    SourceConsumer,
    SourceFailure,
    one_line,
)
from services.history.store import HistoryStore, IngestRefused, IngestResult

log = logging.getLogger(__name__)

T = TypeVar("T")

CONNECTED = Gauge("exchange_history_connected", "1 while the source's event stream is open", ["source"])
EVENT_AGE = Gauge(
    "exchange_history_event_age_seconds", "Wall-clock age of the last stored event's time", ["source"]
)
QUEUED = Gauge("exchange_history_queued_responses", "Responses received and not yet written", ["source"])
LAG = Gauge(
    "exchange_history_lag_events", "Events the upstream has published that are not stored yet", ["source"]
)
STORE_FAILED = Gauge(
    "exchange_history_store_failed",
    "1 while the source's next event cannot be stored (see GetHistoryStatus and the log)",
    ["source"],
)
FAILED_SEQUENCE = Gauge(
    "exchange_history_store_failed_sequence",
    "The sequence of the event that cannot be stored (0 when none)",
    ["source"],
)

Kind = Literal["matching", "accounts"]

OUT_OF_RANGE_RETRY_S = 10.0
STATUS_POLL_S = 5.0
STORE_FAILED_RETRY_S = 5.0
REMINDER_S = 60.0

MESSAGES = FailureMessages(
    key="source",
    failed="cannot store an event: this source's ingest stops at it (history reports NOT_SERVING) "
    "and retries until it can be stored",
    still="still cannot store an event",
    cleared="stored the event that could not be stored; ingest goes on",
)


class StoreFailed(Exception):
    """Raised out of a session: the event `sequence` cannot be stored (the events before it are)."""

    def __init__(self, sequence: int, reason: str) -> None:
        super().__init__(f"event {sequence}: {reason}")
        self.sequence = sequence
        self.reason = reason


def describe(exc: BaseException) -> str:
    """One line naming what went wrong: the driver's error without SQLAlchemy's statement and
    parameters, cut to REASON_CHARS characters."""
    if isinstance(exc, DBAPIError) and exc.orig is not None:
        return one_line(exc.orig)
    return one_line(exc)


class DbWorker:
    """The one thread that writes to the database (and reads the checkpoints it resumes from)."""

    def __init__(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="history-db")

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def close(self) -> None:
        """Wait for the write in progress (its transaction commits or rolls back as a whole)."""
        self._executor.shutdown(wait=True)


def _failure_gauges(source: str, failure: SourceFailure | None) -> None:
    STORE_FAILED.labels(source).set(0 if failure is None else 1)
    FAILED_SEQUENCE.labels(source).set(0 if failure is None else failure.sequence)


class StreamConsumer(SourceConsumer):
    def __init__(
        self,
        source: str,
        kind: Kind,
        address: str | Connection,
        store: HistoryStore,
        worker: DbWorker,
        *,
        batch_events: int = 20_000,
        stream_batch: int = 2000,
        queue_responses: int = 64,
        out_of_range_retry_s: float = OUT_OF_RANGE_RETRY_S,
        status_poll_s: float = STATUS_POLL_S,
        store_failed_retry_s: float = STORE_FAILED_RETRY_S,
        reminder_s: float = REMINDER_S,
        on_failure_change: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        super().__init__(
            source,
            address,
            FailureTracker(
                source,
                MESSAGES,
                log,
                reminder_s=reminder_s,
                on_state=lambda failure: _failure_gauges(source, failure),
                on_change=on_failure_change,
            ),
            logger=log,
            connected=CONNECTED.labels(source),
        )
        self.kind = kind
        self.store = store
        self.worker = worker
        self.batch_events = max(1, batch_events)
        self.stream_batch = stream_batch
        self.queue_responses = queue_responses
        self.out_of_range_retry_s = out_of_range_retry_s
        self.status_poll_s = status_poll_s
        self.store_failed_retry_s = store_failed_retry_s
        self.upstream_sequence = 0  # the upstream's latest event, as last polled (0 = unknown)
        self.checkpoint = 0  # last stored (for status and tests; resumption reads the database)
        self.batches = 0
        self.events = 0
        self.max_batch_seen = 0
        self._ingest: Callable[[str, Sequence[Any]], IngestResult] = (
            store.ingest_matching if kind == "matching" else store.ingest_accounts
        )
        self._backoff = BACKOFF_START_S
        self._quiet = False  # a failure of ours was logged; cleared when events are stored again
        self.client: MatchingClient | AccountsClient
        if kind == "matching":
            self.client = MatchingClient(self.connection)
            events: Any = self.client.events(max_batch=stream_batch, source=source)
        else:
            self.client = AccountsClient(self.connection)
            events = self.client.account_events(source)
        # gaps: the store checks them, in the transaction, and names the event
        self.follower = self._follower(
            events, self._stored_checkpoint, prefetch=queue_responses, max_events=self.batch_events
        )

    @property
    def reminder_s(self) -> float:
        return self.tracker.reminder_s

    @reminder_s.setter
    def reminder_s(self, value: float) -> None:
        self.tracker.reminder_s = value

    @property
    def on_failure_change(self) -> Callable[[], Awaitable[None]] | None:
        return self.tracker.on_change

    @on_failure_change.setter
    def on_failure_change(self, value: Callable[[], Awaitable[None]] | None) -> None:
        self.tracker.on_change = value

    async def _stored_checkpoint(self) -> int:
        """Where each (re)connection resumes: the checkpoint in the database (read by its worker)."""
        cp = await self.worker.run(self.store.checkpoint, self.source)
        self.checkpoint = cp
        return cp

    async def _consume(self) -> None:
        queued = QUEUED.labels(self.source)
        while True:
            delay = self._backoff
            try:
                batches = self.follower.batches()
                async with contextlib.aclosing(batches):
                    async for batch in batches:
                        queued.set(self.follower.queued)
                        await self._store(batch.events)
            except EventsOutOfRange:  # logged by the follower: it needs an operator
                delay = self.out_of_range_retry_s
            except StoreFailed as exc:
                delay = self.store_failed_retry_s
                await self._failed(exc)
                self._quiet = True
            except Exception as exc:
                if self.store.is_transient(exc):
                    log.error(
                        "history database error; retrying",
                        extra={"source": self.source, "error": describe(exc), "retry_s": delay},
                    )
                    self._quiet = True
                else:  # outside an ingest (reading the checkpoint, a bug): no fast retries either
                    delay = self.store_failed_retry_s
                    await self._failed(StoreFailed(self.checkpoint + 1, describe(exc)), exc)
                    self._quiet = True
            self.follower.quiet = self.follower.quiet or self._quiet
            queued.set(0)
            await asyncio.sleep(delay)
            self._backoff = min(self._backoff * 2, BACKOFF_MAX_S)

    async def _poll(self) -> None:
        """Every status_poll_s: the upstream's latest sequence, for the lag gauge and to notice an upstream
        that is behind the stored checkpoint (reset or restored from an old backup: an operator must
        look, since new events there would carry sequences history already stored)."""
        if self.status_poll_s <= 0:
            return
        behind_logged = False
        await asyncio.sleep(min(1.0, self.status_poll_s))  # let the consumer read its checkpoint
        while True:
            try:
                if isinstance(self.client, MatchingClient):
                    status: Any = await self.client.get_matching_status(timeout=2.0, retry=NO_RETRY)
                else:
                    status = await self.client.get_accounts_status(timeout=2.0, retry=NO_RETRY)
            except ClientError as exc:
                if exc.code == grpc.StatusCode.UNIMPLEMENTED:
                    return
            else:
                upstream = int(status.event_sequence)
                self.upstream_sequence = upstream
                LAG.labels(self.source).set(max(0, upstream - self.checkpoint))
                if upstream < self.checkpoint:
                    if not behind_logged:
                        log.error(
                            "upstream is behind the history database (was it reset?); history waits "
                            "for events after its checkpoint",
                            extra={
                                "source": self.source,
                                "address": self.address,
                                "upstream_sequence": upstream,
                                "checkpoint": self.checkpoint,
                            },
                        )
                        behind_logged = True
                else:
                    behind_logged = False
            await asyncio.sleep(self.status_poll_s)

    async def _store(self, batch: Sequence[Any]) -> None:
        """Store `batch` in one transaction. When that fails for a reason a retry does not fix, store
        what can be stored before the first event that cannot (splitting the batch: at the event the
        error names, else in halves), then raise StoreFailed for that event. Transient database errors
        propagate as they are."""
        parts: list[Sequence[Any]] = [batch]  # a stack: the next part to store is the last
        while parts:
            part = parts.pop()
            try:
                result = await self.worker.run(self._ingest, self.source, part)
            except Exception as exc:
                if self.store.is_transient(exc):
                    raise
                cut = _cut(part, exc)
                if cut is None:
                    if isinstance(exc, IngestRefused):
                        sequence = exc.sequence
                    else:
                        sequence = max(int(part[0].sequence), self.checkpoint + 1)
                    raise StoreFailed(sequence, describe(exc)) from exc
                parts.append(part[cut:])
                parts.append(part[:cut])
                continue
            await self._stored(result, part)

    async def _failed(self, exc: StoreFailed, cause: BaseException | None = None) -> None:
        """Record (and log once) that event `exc.sequence` cannot be stored."""
        await self.tracker.failed(
            exc.sequence,
            exc.reason,
            checkpoint=self.checkpoint,
            retry_s=self.store_failed_retry_s,
            exc_info=cause if cause is not None and not isinstance(cause, IngestRefused) else None,
        )

    async def _stored(self, result: IngestResult, batch: Sequence[Any]) -> None:
        self.checkpoint = result.checkpoint
        self.batches += 1
        self.events += result.events
        self.max_batch_seen = max(self.max_batch_seen, len(batch))
        if not result.events:
            return  # only a resend of what is stored: nothing flows yet
        self._backoff = BACKOFF_START_S
        if self._quiet:
            log.info("ingest back", extra={"source": self.source, "checkpoint": result.checkpoint})
            self._quiet = False
            self.follower.quiet = False
        if batch:
            EVENT_AGE.labels(self.source).set(max(0.0, time.time() - batch[-1].time_us / 1e6))
        await self.tracker.taken_through(result.checkpoint)


def _cut(part: Sequence[Any], exc: BaseException) -> int | None:
    """Where to split a part that failed with `exc`: before the event the error names (None when that
    is the part's first event), else in half (None for a single event)."""
    if isinstance(exc, IngestRefused):
        i = 0
        while i < len(part) and part[i].sequence < exc.sequence:
            i += 1
        if i == 0:
            return None
        if i < len(part):
            return i
    if len(part) <= 1:
        return None
    return len(part) // 2

"""Stream consumers: one per event source (each matching shard, and accounts), feeding HistoryStore.

Each (re)connection starts from the checkpoint stored in the database + 1 (never from memory). A reader
task puts the stream's responses on a bounded queue; the writer loop takes everything queued (whole
responses, up to `batch_events`) and writes it as ONE transaction in the database worker thread. So while
a write runs, the next responses pile up and the next transaction takes them all: the batches grow with
the event rate, and a full queue pushes back on the stream (gRPC flow control).

Failures: a stream that ends or fails (UNAVAILABLE while the upstream restarts) reconnects with
exponential backoff. OUT_OF_RANGE (the upstream no longer keeps the events after our checkpoint) is
logged as an error and retried slowly: it needs an operator, and skipping would lose rows. A database
error or a gap in the sequences drops the session; the next one resumes from the stored checkpoint.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal, TypeVar

import grpc
from exchange.v1 import accounts_service_pb2 as apb
from exchange.v1 import accounts_service_pb2_grpc as agrpc
from exchange.v1 import matching_service_pb2 as mpb
from exchange.v1 import matching_service_pb2_grpc as mgrpc
from prometheus_client import Gauge
from sqlalchemy.exc import SQLAlchemyError

from services.common.rpc import channel
from services.history.store import GapError, HistoryStore, IngestResult, SourceMismatch

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

Kind = Literal["matching", "accounts"]

BACKOFF_START_S = 0.05
BACKOFF_MAX_S = 2.0
OUT_OF_RANGE_RETRY_S = 10.0
STATUS_POLL_S = 5.0


class DbWorker:
    """The one thread that writes to the database (and reads the checkpoints it resumes from)."""

    def __init__(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="history-db")

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def close(self) -> None:
        """Wait for the write in progress (its transaction commits or rolls back as a whole)."""
        self._executor.shutdown(wait=True)


class _End:
    """Queue marker: the stream ended (error None) or failed."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException | None) -> None:
        self.error = error


class StreamConsumer:
    def __init__(
        self,
        source: str,
        kind: Kind,
        address: str,
        store: HistoryStore,
        worker: DbWorker,
        *,
        batch_events: int = 20_000,
        stream_batch: int = 2000,
        queue_responses: int = 64,
        out_of_range_retry_s: float = OUT_OF_RANGE_RETRY_S,
        status_poll_s: float = STATUS_POLL_S,
    ) -> None:
        self.source = source
        self.kind = kind
        self.address = address
        self.store = store
        self.worker = worker
        self.batch_events = max(1, batch_events)
        self.stream_batch = stream_batch
        self.queue_responses = queue_responses
        self.out_of_range_retry_s = out_of_range_retry_s
        self.status_poll_s = status_poll_s
        self.upstream_sequence = 0  # the upstream's latest event, as last polled (0 = unknown)
        self.checkpoint = 0  # last stored (for status and tests; resumption reads the database)
        self.batches = 0
        self.events = 0
        self.max_batch_seen = 0
        self._ingest: Callable[[str, Sequence[Any]], IngestResult] = (
            store.ingest_matching if kind == "matching" else store.ingest_accounts
        )
        self._backoff = BACKOFF_START_S
        self._quiet = False  # a stream failure was logged; repeats go to debug until events flow again

    async def run(self) -> None:
        """Consume until cancelled."""
        poller = asyncio.create_task(self._poll_status(), name=f"history-status-{self.source}")
        try:
            await self._consume()
        finally:
            poller.cancel()
            await asyncio.gather(poller, return_exceptions=True)
            CONNECTED.labels(self.source).set(0)

    async def _consume(self) -> None:
        connected = CONNECTED.labels(self.source)
        while True:
            delay = self._backoff
            try:
                start = await self.worker.run(self.store.checkpoint, self.source) + 1
                self.checkpoint = start - 1
                log.log(
                    logging.DEBUG if self._quiet else logging.INFO,
                    "following event stream",
                    extra={"source": self.source, "address": self.address, "from_sequence": start},
                )
                if await self._session(start):
                    log.info("event stream ended; reconnecting", extra={"source": self.source})
            except grpc.aio.AioRpcError as exc:
                code = exc.code()
                if code == grpc.StatusCode.OUT_OF_RANGE:
                    delay = self.out_of_range_retry_s
                    log.error(
                        "upstream no longer has the events after our checkpoint; history cannot "
                        "continue without them (retrying)",
                        extra={
                            "source": self.source,
                            "address": self.address,
                            "details": exc.details() or "",
                            "retry_s": delay,
                        },
                    )
                else:
                    log.log(
                        logging.DEBUG if self._quiet else logging.WARNING,
                        "event stream down; retrying",
                        extra={
                            "source": self.source,
                            "address": self.address,
                            "code": code.name if code is not None else "",
                            "details": exc.details() or "",
                            "retry_s": delay,
                        },
                    )
                self._quiet = True
            except (GapError, SourceMismatch) as exc:
                log.error(
                    "bad event sequence; reconnecting", extra={"source": self.source, "error": str(exc)}
                )
            except SQLAlchemyError as exc:
                error = str(getattr(exc, "orig", None) or exc)
                log.error(
                    "history database error; retrying",
                    extra={
                        "source": self.source,
                        "error": f"{type(exc).__name__}: {error[:500]}",
                        "retry_s": delay,
                    },
                )
            except Exception:
                log.exception("unexpected consumer error; retrying", extra={"source": self.source})
            connected.set(0)
            QUEUED.labels(self.source).set(0)
            await asyncio.sleep(delay)
            self._backoff = min(self._backoff * 2, BACKOFF_MAX_S)

    async def _poll_status(self) -> None:
        """Every status_poll_s: the upstream's latest sequence, for the lag gauge and to notice an upstream
        that is behind the stored checkpoint (reset or restored from an old backup: an operator must
        look, since new events there would carry sequences history already stored)."""
        if self.status_poll_s <= 0:
            return
        behind_logged = False
        await asyncio.sleep(min(1.0, self.status_poll_s))  # let the consumer read its checkpoint
        async with channel(self.address) as ch:
            while True:
                try:
                    if self.kind == "matching":
                        status: Any = await mgrpc.MatchingServiceStub(ch).GetMatchingStatus(
                            mpb.GetMatchingStatusRequest(), timeout=2.0
                        )
                    else:
                        status = await agrpc.AccountsServiceStub(ch).GetAccountsStatus(
                            apb.GetAccountsStatusRequest(), timeout=2.0
                        )
                except grpc.aio.AioRpcError as exc:
                    if exc.code() == grpc.StatusCode.UNIMPLEMENTED:
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

    def _open(self, ch: grpc.aio.Channel, start: int) -> Any:
        if self.kind == "matching":
            return mgrpc.MatchingServiceStub(ch).StreamEvents(
                mpb.StreamEventsRequest(from_sequence=start, max_batch=self.stream_batch)
            )
        return agrpc.AccountsServiceStub(ch).StreamAccountEvents(
            apb.StreamAccountEventsRequest(from_sequence=start)
        )

    async def _session(self, start: int) -> bool:
        """One connection. Returns True when the stream ended normally; raises on failure."""
        queue: asyncio.Queue[Sequence[Any] | _End] = asyncio.Queue(maxsize=self.queue_responses)
        async with channel(self.address) as ch:
            call = self._open(ch, start)
            reader = asyncio.create_task(self._read(call, queue), name=f"history-read-{self.source}")
            try:
                return await self._write_loop(queue)
            finally:
                reader.cancel()
                call.cancel()
                await asyncio.gather(reader, return_exceptions=True)

    async def _read(self, call: AsyncIterator[Any], queue: asyncio.Queue[Sequence[Any] | _End]) -> None:
        connected = CONNECTED.labels(self.source)
        queued = QUEUED.labels(self.source)
        try:
            async for resp in call:
                connected.set(1)
                if resp.events:
                    await queue.put(resp.events)
                    queued.set(queue.qsize())
        except grpc.aio.AioRpcError as exc:
            await queue.put(_End(exc))
            return
        await queue.put(_End(None))

    async def _write_loop(self, queue: asyncio.Queue[Sequence[Any] | _End]) -> bool:
        while True:
            item = await queue.get()
            if isinstance(item, _End):
                if item.error is not None:
                    raise item.error
                return True
            batch = list(item)
            end: _End | None = None
            while len(batch) < self.batch_events and not queue.empty():
                more = queue.get_nowait()
                if isinstance(more, _End):
                    end = more
                    break
                batch.extend(more)
            QUEUED.labels(self.source).set(queue.qsize())
            result = await self.worker.run(self._ingest, self.source, batch)
            self._stored(result, batch)
            if end is not None:
                if end.error is not None:
                    raise end.error
                return True

    def _stored(self, result: IngestResult, batch: Sequence[Any]) -> None:
        self.checkpoint = result.checkpoint
        self.batches += 1
        self.events += result.events
        self.max_batch_seen = max(self.max_batch_seen, len(batch))
        self._backoff = BACKOFF_START_S
        if self._quiet:
            log.info("event stream back", extra={"source": self.source, "checkpoint": result.checkpoint})
            self._quiet = False
        if batch:
            EVENT_AGE.labels(self.source).set(max(0.0, time.time() - batch[-1].time_us / 1e6))

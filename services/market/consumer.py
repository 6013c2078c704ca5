"""Follows one matching shard's event stream into the market-data state.

The stream is followed with services.clients.follow (EventFollower): each (re)connection asks
MatchingService.StreamEvents for the events after the state's checkpoint for the shard (the follower's
checkpoint callback), resends at or below it are dropped; each response (whole commands only) is
applied at once, synchronously, so the state and its snapshots only ever hold whole commands. Stream
errors reconnect with exponential backoff (in the follower). OUT_OF_RANGE (the shard no longer has the
events after the checkpoint) is logged as an error by the follower and retried slowly
(`out_of_range_retry_s`): skipping would lose events. A second task polls the shard's status to export
the consumer's lag.

An event the state cannot apply (state.BadEvent: a gap, an event of another source, a trade without a
positive price and amount; or an unexpected error while applying) fails the same way on every retry,
so it is not retried fast: the events before it stay applied, the shard is in `failure` (ApplyFailure:
the sequence, a one-line reason), logged once as one line (with the traceback only for an unexpected
error), then as a short reminder at most every `reminder_s`; exchange_market_apply_failed{shard} is 1
and `on_failure_change` is awaited (the app then reports NOT_SERVING). The consumer reconnects every
`apply_failed_retry_s` from the checkpoint and resumes by itself once the event applies (the shard's
stream corrected, or the code upgraded: the restarted process resumes from its snapshot).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import grpc
from exchange.v1 import events_pb2 as ev
from prometheus_client import Counter, Gauge

from services.clients import NO_RETRY, ClientError, EventFollower, EventsOutOfRange, MatchingClient
from services.clients.channels import Connection
from services.market.state import BadEvent, Changes, MarketDataState

log = logging.getLogger(__name__)

APPLIED = Counter("exchange_market_events_applied_total", "Matching events applied", ["shard"])
CHECKPOINT = Gauge("exchange_market_checkpoint", "Last matching event applied", ["shard"])
LAG = Gauge(
    "exchange_market_lag_events", "Events the shard has published that are not applied yet", ["shard"]
)
EVENT_AGE = Gauge(
    "exchange_market_event_age_seconds", "Wall-clock age of the last applied event's time", ["shard"]
)
CONNECTED = Gauge("exchange_market_connected", "1 while the shard's event stream is open", ["shard"])
APPLY_FAILED = Gauge(
    "exchange_market_apply_failed",
    "1 while the shard's next event cannot be applied (see the log)",
    ["shard"],
)

BACKOFF_START_S = 0.05
BACKOFF_MAX_S = 2.0
APPLY_FAILED_RETRY_S = 5.0
OUT_OF_RANGE_RETRY_S = 10.0
REMINDER_S = 60.0
REASON_CHARS = 300


@dataclass(frozen=True)
class ApplyFailure:
    """A shard whose next event the market-data state cannot apply."""

    shard: str
    sequence: int  # the first event not applied
    reason: str  # one line
    since: float  # time.time() when it was first seen


class ApplyFailed(Exception):
    def __init__(self, sequence: int, reason: str, cause: BaseException | None = None) -> None:
        super().__init__(f"event {sequence}: {reason}")
        self.sequence = sequence
        self.reason = reason if len(reason) <= REASON_CHARS else reason[: REASON_CHARS - 1] + "…"
        self.cause = cause  # an unexpected error (its traceback is logged once)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class ShardConsumer:
    def __init__(
        self,
        shard: str,
        address: str | Connection,
        state: MarketDataState,
        on_batch: Callable[[Changes], None],
        *,
        max_batch: int = 2000,
        lag_poll_s: float = 2.0,
        apply_failed_retry_s: float = APPLY_FAILED_RETRY_S,
        out_of_range_retry_s: float = OUT_OF_RANGE_RETRY_S,
        reminder_s: float = REMINDER_S,
        on_failure_change: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.shard = shard
        self.connection = address if isinstance(address, Connection) else Connection.at(address, name=shard)
        self.client = MatchingClient(self.connection)
        self.state = state
        self.on_batch = on_batch
        self.max_batch = max_batch
        self.lag_poll_s = lag_poll_s
        self.apply_failed_retry_s = apply_failed_retry_s
        self.out_of_range_retry_s = out_of_range_retry_s
        self.reminder_s = reminder_s
        self.on_failure_change = on_failure_change
        self.failure: ApplyFailure | None = None  # the event that cannot be applied, while it cannot
        self._reminded = 0.0  # time.monotonic() of the last log line about `failure`
        self.shard_sequence = 0  # the shard's latest event sequence, as last polled
        connected = CONNECTED.labels(shard)
        self.follower: EventFollower[ev.MatchingEvent] = EventFollower(
            self.client.events(max_batch=max_batch, source=shard),
            checkpoint=lambda: state.checkpoint(shard),
            backoff_initial_s=BACKOFF_START_S,
            backoff_max_s=BACKOFF_MAX_S,
            check_gaps=False,  # the state refuses a gap (GapError) and names it
            logger=log,
            log_extra={"shard": shard},
            on_connected=lambda up: connected.set(1 if up else 0),
        )
        APPLY_FAILED.labels(shard).set(0)

    @property
    def address(self) -> str:
        return self.connection.address

    async def run(self) -> None:
        """Consume until cancelled."""
        poller = asyncio.create_task(self._poll_lag())
        try:
            await self._consume()
        finally:
            poller.cancel()
            await asyncio.gather(poller, return_exceptions=True)
            CONNECTED.labels(self.shard).set(0)
            await self.connection.close()

    async def _consume(self) -> None:
        shard = self.shard
        state = self.state
        applied = APPLIED.labels(shard)
        checkpoint = CHECKPOINT.labels(shard)
        while True:
            delay = self.apply_failed_retry_s
            try:
                batches = self.follower.batches()
                async with contextlib.aclosing(batches):
                    async for batch in batches:
                        failed: ApplyFailed | None = None
                        try:
                            changes = state.apply_batch(shard, batch.events)
                        except BadEvent as exc:
                            changes = exc.changes  # the events before it are applied
                            failed = ApplyFailed(exc.sequence, str(exc))
                        except Exception as exc:
                            changes = Changes()
                            failed = ApplyFailed(state.checkpoint(shard) + 1, _one_line(exc), exc)
                        if changes.events:
                            self.on_batch(changes)
                            applied.inc(changes.events)
                        cp = state.checkpoint(shard)
                        checkpoint.set(cp)
                        if self.shard_sequence:
                            LAG.labels(shard).set(max(0, self.shard_sequence - cp))
                        if changes.events:
                            await self._applied(cp)
                        if failed is not None:
                            raise failed
            except ApplyFailed as exc:
                await self._failed(exc)
                self.follower.quiet = True  # retries are quiet until events apply again
            except EventsOutOfRange:  # logged by the follower: it needs an operator
                delay = self.out_of_range_retry_s
            await asyncio.sleep(delay)

    async def _failed(self, exc: ApplyFailed) -> None:
        """Record (and log once) that event `exc.sequence` cannot be applied; a repeat of the same
        failure only logs a short reminder, at most every reminder_s."""
        now = time.monotonic()
        old = self.failure
        if old is not None and (old.sequence, old.reason) == (exc.sequence, exc.reason):
            if now - self._reminded >= self.reminder_s:
                self._reminded = now
                log.warning(
                    "still cannot apply an event",
                    extra={
                        "shard": self.shard,
                        "sequence": exc.sequence,
                        "failing_s": round(time.time() - old.since),
                    },
                )
            return
        self.failure = ApplyFailure(self.shard, exc.sequence, exc.reason, time.time())
        self._reminded = now
        APPLY_FAILED.labels(self.shard).set(1)
        log.error(
            "cannot apply an event: market data of this shard stops at it (NOT_SERVING) and retries "
            "until it applies",
            extra={
                "shard": self.shard,
                "sequence": exc.sequence,
                "checkpoint": self.state.checkpoint(self.shard),
                "reason": exc.reason,
                "retry_s": self.apply_failed_retry_s,
            },
            exc_info=exc.cause,
        )
        if old is None and self.on_failure_change is not None:
            await self.on_failure_change()

    async def _applied(self, checkpoint: int) -> None:
        failure = self.failure
        if failure is None or checkpoint < failure.sequence:
            return
        self.failure = None
        self.follower.quiet = False
        APPLY_FAILED.labels(self.shard).set(0)
        log.info(
            "applied the event that could not be applied; market data goes on",
            extra={
                "shard": self.shard,
                "sequence": failure.sequence,
                "checkpoint": checkpoint,
                "failed_s": round(time.time() - failure.since),
            },
        )
        if self.on_failure_change is not None:
            await self.on_failure_change()

    async def _poll_lag(self) -> None:
        if self.lag_poll_s <= 0:
            return
        while True:
            await asyncio.sleep(self.lag_poll_s)
            t = self.state.event_times.get(self.shard)
            if t:
                EVENT_AGE.labels(self.shard).set(max(0.0, time.time() - t / 1e6))
            try:
                status = await self.client.get_matching_status(timeout=1.0, retry=NO_RETRY)
            except ClientError as exc:
                if exc.code == grpc.StatusCode.UNIMPLEMENTED:
                    return
                continue
            self.shard_sequence = int(status.event_sequence)
            LAG.labels(self.shard).set(max(0, self.shard_sequence - self.state.checkpoint(self.shard)))

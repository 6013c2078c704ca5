"""Follows one matching shard's event stream into the market-data state.

Each (re)connection asks MatchingService.StreamEvents for the events after the state's checkpoint for
the shard; each response (whole commands only) is applied at once, synchronously, so the state and its
snapshots only ever hold whole commands. Stream errors reconnect with exponential backoff. A second
task polls the shard's status to export the consumer's lag.

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
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import grpc
from exchange.v1 import matching_service_pb2 as mpb
from exchange.v1 import matching_service_pb2_grpc as mgrpc
from prometheus_client import Counter, Gauge

from services.common.rpc import channel
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
        address: str,
        state: MarketDataState,
        on_batch: Callable[[Changes], None],
        *,
        max_batch: int = 2000,
        lag_poll_s: float = 2.0,
        apply_failed_retry_s: float = APPLY_FAILED_RETRY_S,
        reminder_s: float = REMINDER_S,
        on_failure_change: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.shard = shard
        self.address = address
        self.state = state
        self.on_batch = on_batch
        self.max_batch = max_batch
        self.lag_poll_s = lag_poll_s
        self.apply_failed_retry_s = apply_failed_retry_s
        self.reminder_s = reminder_s
        self.on_failure_change = on_failure_change
        self.failure: ApplyFailure | None = None  # the event that cannot be applied, while it cannot
        self._reminded = 0.0  # time.monotonic() of the last log line about `failure`
        self.shard_sequence = 0  # the shard's latest event sequence, as last polled
        APPLY_FAILED.labels(shard).set(0)

    async def run(self) -> None:
        """Consume until cancelled."""
        poller = asyncio.create_task(self._poll_lag())
        try:
            await self._consume()
        finally:
            poller.cancel()
            CONNECTED.labels(self.shard).set(0)

    async def _consume(self) -> None:
        backoff = BACKOFF_START_S
        shard = self.shard
        state = self.state
        applied = APPLIED.labels(shard)
        checkpoint = CHECKPOINT.labels(shard)
        quiet = False  # a failure was already logged; repeat failures go to debug until data flows
        while True:
            delay = backoff
            start = state.checkpoint(shard) + 1
            log.log(
                logging.DEBUG if quiet else logging.INFO,
                "following shard",
                extra={"shard": shard, "address": self.address, "from_sequence": start},
            )
            try:
                async with channel(self.address) as ch:
                    stub = mgrpc.MatchingServiceStub(ch)
                    call = stub.StreamEvents(
                        mpb.StreamEventsRequest(from_sequence=start, max_batch=self.max_batch)
                    )
                    async for resp in call:
                        CONNECTED.labels(shard).set(1)
                        if not resp.events:
                            continue
                        if quiet and self.failure is None:
                            log.info(
                                "shard event stream back", extra={"shard": shard, "from_sequence": start}
                            )
                            quiet = False
                        failed: ApplyFailed | None = None
                        try:
                            changes = state.apply_batch(shard, resp.events)
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
                        backoff = BACKOFF_START_S
                    log.info("shard event stream ended", extra={"shard": shard})
            except ApplyFailed as exc:
                delay = self.apply_failed_retry_s
                await self._failed(exc)
                quiet = True
            except grpc.aio.AioRpcError as exc:
                log.log(
                    logging.DEBUG if quiet else logging.WARNING,
                    "shard event stream down; retrying",
                    extra={
                        "shard": shard,
                        "code": exc.code().name,
                        "details": exc.details() or "",
                        "retry_s": backoff,
                    },
                )
                quiet = True
            CONNECTED.labels(shard).set(0)
            await asyncio.sleep(delay)
            backoff = min(backoff * 2, BACKOFF_MAX_S)

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
        async with channel(self.address) as ch:
            stub = mgrpc.MatchingServiceStub(ch)
            while True:
                await asyncio.sleep(self.lag_poll_s)
                t = self.state.event_times.get(self.shard)
                if t:
                    EVENT_AGE.labels(self.shard).set(max(0.0, time.time() - t / 1e6))
                try:
                    status = await stub.GetMatchingStatus(mpb.GetMatchingStatusRequest(), timeout=1.0)
                except grpc.aio.AioRpcError as exc:
                    if exc.code() == grpc.StatusCode.UNIMPLEMENTED:
                        return
                    continue
                self.shard_sequence = int(status.event_sequence)
                LAG.labels(self.shard).set(max(0, self.shard_sequence - self.state.checkpoint(self.shard)))

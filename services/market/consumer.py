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

import grpc
from prometheus_client import Counter, Gauge

from services.clients import NO_RETRY, ClientError, EventsOutOfRange, MatchingClient
from services.clients.channels import Connection
from services.common.consumers import FailureMessages, FailureTracker, SourceConsumer, cut, one_line
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

APPLY_FAILED_RETRY_S = 5.0
OUT_OF_RANGE_RETRY_S = 10.0
REMINDER_S = 60.0

MESSAGES = FailureMessages(
    key="shard",
    failed="cannot apply an event: market data of this shard stops at it (NOT_SERVING) and retries "
    "until it applies",
    still="still cannot apply an event",
    cleared="applied the event that could not be applied; market data goes on",
)


class ApplyFailed(Exception):
    def __init__(self, sequence: int, reason: str, cause: BaseException | None = None) -> None:
        super().__init__(f"event {sequence}: {reason}")
        self.sequence = sequence
        self.reason = cut(reason)
        self.cause = cause  # an unexpected error (its traceback is logged once)


class ShardConsumer(SourceConsumer):
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
        on_unknown_markets: Callable[[set[str]], None] | None = None,
    ) -> None:
        super().__init__(
            shard,
            address,
            FailureTracker(
                shard,
                MESSAGES,
                log,
                reminder_s=reminder_s,
                on_state=lambda failure: APPLY_FAILED.labels(shard).set(0 if failure is None else 1),
                on_change=on_failure_change,
            ),
            logger=log,
            connected=CONNECTED.labels(shard),
        )
        self.shard = shard
        self.client = MatchingClient(self.connection)
        self.state = state
        self.on_batch = on_batch
        self.max_batch = max_batch
        self.lag_poll_s = lag_poll_s
        self.apply_failed_retry_s = apply_failed_retry_s
        self.out_of_range_retry_s = out_of_range_retry_s
        # Told the markets of a batch the state does not know, before the batch is applied (the app
        # then looks for a market added to the configuration while running: not one of its events is
        # skipped as "not configured here").
        self.on_unknown_markets = on_unknown_markets
        self.shard_sequence = 0  # the shard's latest event sequence, as last polled
        # gaps: the state refuses them (GapError) and names the event
        self.follower = self._follower(
            self.client.events(max_batch=max_batch, source=shard), lambda: state.checkpoint(shard)
        )

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
                        if self.on_unknown_markets is not None:
                            known = state.markets
                            unknown = {e.market for e in batch.events if e.market and e.market not in known}
                            if unknown:
                                self.on_unknown_markets(unknown)
                        try:
                            changes = state.apply_batch(shard, batch.events)
                        except BadEvent as exc:
                            changes = exc.changes  # the events before it are applied
                            failed = ApplyFailed(exc.sequence, str(exc))
                        except Exception as exc:
                            changes = Changes()
                            failed = ApplyFailed(state.checkpoint(shard) + 1, one_line(exc), exc)
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
        """Record (and log once) that event `exc.sequence` cannot be applied."""
        await self.tracker.failed(
            exc.sequence,
            exc.reason,
            checkpoint=self.state.checkpoint(self.shard),
            retry_s=self.apply_failed_retry_s,
            exc_info=exc.cause,
        )

    async def _applied(self, checkpoint: int) -> None:
        if await self.tracker.taken_through(checkpoint):
            self.follower.quiet = False

    async def _poll(self) -> None:
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

"""One source exported to one sink: follow its events after the broker's last message, publish each
batch, wait for the broker's acks; a refusal stops this export loudly and it retries by itself.

On start and after every failure the follower's checkpoint is the sink's last_sequence(source): the
broker, not memory, says where to resume. A refusal (SinkRefused) is logged once at ERROR (then a
reminder at most every reminder_s), the app reports NOT_SERVING, and the export retries every
retry_s; once a batch is acknowledged again the failure is cleared (one line) and the app SERVING."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from prometheus_client import Gauge

from services.clients import EventsOutOfRange
from services.clients.follow import EventFollower, EventSource
from services.common.consumers import (
    BACKOFF_MAX_S,
    BACKOFF_START_S,
    FailureMessages,
    FailureTracker,
    SourceFailure,
    one_line,
)
from services.exporter.messages import to_message
from services.exporter.sinks import Sink, SinkRefused

log = logging.getLogger(__name__)

EXPORTED = Gauge("exchange_exporter_sequence", "Last sequence the broker acknowledged", ["source", "sink"])
FAILED = Gauge(
    "exchange_exporter_failed", "1 while the broker refuses the source's events", ["source", "sink"]
)

MESSAGES = FailureMessages(
    key="source",
    failed="the broker refuses the events: this export stops (exporter NOT_SERVING) and retries",
    still="the broker still refuses the events",
    cleared="the broker acknowledges the events again; export goes on",
)


class SourceExport:
    def __init__(
        self,
        source: str,
        events: EventSource[Any],
        sink: Sink,
        *,
        fmt: str = "protobuf",
        batch_size: int = 1000,
        retry_s: float = 1.0,
        reminder_s: float = 60.0,
        on_failure_change: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.source = source
        self.sink = sink
        self.fmt = fmt
        self.retry_s = retry_s
        self.exported = 0  # last sequence acknowledged (for status and tests)
        self.messages = 0
        self._exported = EXPORTED.labels(source, sink.name)
        self._failed = FAILED.labels(source, sink.name)
        self.tracker = FailureTracker(
            f"{source}->{sink.name}",
            MESSAGES,
            log,
            reminder_s=reminder_s,
            on_state=lambda f: self._failed.set(0 if f is None else 1),
            on_change=on_failure_change,
        )
        self.follower: EventFollower[Any] = EventFollower(
            events,
            checkpoint=self._checkpoint,
            backoff_initial_s=BACKOFF_START_S,
            backoff_max_s=BACKOFF_MAX_S,
            prefetch=16,
            max_events=max(1, batch_size),
            logger=log,
            log_extra={"sink": sink.name},
        )

    @property
    def failure(self) -> SourceFailure | None:
        return self.tracker.failure

    async def _checkpoint(self) -> int:
        last = await self.sink.last_sequence(self.source)
        self.exported = last
        self._exported.set(last)
        return last

    async def run(self) -> None:
        while True:
            try:
                batches = self.follower.batches()
                async with contextlib.aclosing(batches):
                    async for batch in batches:
                        messages = [to_message(e, self.fmt) for e in batch.events]
                        await self.sink.publish(self.source, messages)
                        self.exported = batch.last
                        self.messages += len(messages)
                        self._exported.set(batch.last)
                        await self.tracker.taken_through(batch.last)
            except SinkRefused as exc:
                await self.tracker.failed(
                    self.exported + 1,
                    one_line(exc),
                    checkpoint=self.exported,
                    retry_s=self.retry_s,
                    exc_info=None,
                )
                self.follower.quiet = True
            except EventsOutOfRange:  # logged by the follower: an operator must look
                pass
            await asyncio.sleep(self.retry_s)

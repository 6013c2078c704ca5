"""What the event consumers (history's StreamConsumer, market's ShardConsumer) share.

`SourceConsumer`, their base: one source's events followed with services.clients' EventFollower
(each (re)connection resumes after the consumer's checkpoint, with backoff; gaps are left to the
consumer's store or state, which names the event), the connection, and the run: `_consume` until
cancelled with `_poll` (the upstream's status, for the lag) beside it.

When a source's next event cannot be taken (stored, applied), it fails the same way on every retry,
so it is not retried fast:
- `SourceFailure`: the record of it (the source, the first event not taken, a one-line reason, since).
- `FailureTracker`: records the failure and logs it once as one line, then only a short reminder at
  most every `reminder_s`; clears it (one line) once the consumer's checkpoint reaches that event;
  reports every change to `on_state` (the consumer's gauges) and awaits `on_change` when a source
  starts or stops failing (the app then updates its health).
- `set_health`: the service is NOT_SERVING while any source fails, SERVING otherwise.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from grpc_health.v1 import health_pb2

from services.clients import EventFollower
from services.clients.channels import Connection
from services.clients.follow import Checkpoint, EventSource
from services.common.rpc import ServerHandle

REASON_CHARS = 300
BACKOFF_START_S = 0.05  # the follower's reconnection backoff, doubling up to BACKOFF_MAX_S
BACKOFF_MAX_S = 2.0


@dataclass(frozen=True)
class SourceFailure:
    """A source whose next event the consumer cannot take."""

    source: str
    sequence: int  # the first event not taken
    reason: str  # one line
    since: float  # time.time() when it was first seen


@dataclass(frozen=True)
class FailureMessages:
    """The log lines of one kind of consumer (what "taking" an event means to it)."""

    key: str  # the log field naming the source ("source", "shard")
    failed: str  # the first line of a failure
    still: str  # the reminder
    cleared: str  # the event was taken after all


def one_line(exc: BaseException, limit: int = REASON_CHARS) -> str:
    """`Type: message` on one line, cut to `limit` characters."""
    text = " ".join(str(exc).split())
    return cut(f"{type(exc).__name__}: {text}" if text else type(exc).__name__, limit)


def cut(reason: str, limit: int = REASON_CHARS) -> str:
    return reason if len(reason) <= limit else reason[: limit - 1] + "…"


class FailureTracker:
    def __init__(
        self,
        source: str,
        messages: FailureMessages,
        logger: logging.Logger,
        *,
        reminder_s: float,
        on_state: Callable[[SourceFailure | None], None] = lambda failure: None,
        on_change: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.source = source
        self.messages = messages
        self.log = logger
        self.reminder_s = reminder_s
        self.on_state = on_state
        self.on_change = on_change
        self.failure: SourceFailure | None = None  # the event that cannot be taken, while it cannot
        self._reminded = 0.0  # time.monotonic() of the last log line about `failure`
        on_state(None)

    async def failed(
        self, sequence: int, reason: str, *, checkpoint: int, retry_s: float, exc_info: BaseException | None
    ) -> None:
        """Record (and log once) that event `sequence` cannot be taken; a repeat of the same failure
        only logs a short reminder, at most every reminder_s."""
        now = time.monotonic()
        old = self.failure
        key = self.messages.key
        if old is not None and (old.sequence, old.reason) == (sequence, reason):
            if now - self._reminded >= self.reminder_s:
                self._reminded = now
                self.log.warning(
                    self.messages.still,
                    extra={
                        key: self.source,
                        "sequence": sequence,
                        "failing_s": round(time.time() - old.since),
                    },
                )
            return
        self.failure = SourceFailure(self.source, sequence, reason, time.time())
        self._reminded = now
        self.on_state(self.failure)
        self.log.error(
            self.messages.failed,
            extra={
                key: self.source,
                "sequence": sequence,
                "checkpoint": checkpoint,
                "reason": reason,
                "retry_s": retry_s,
            },
            exc_info=exc_info,
        )
        if old is None and self.on_change is not None:
            await self.on_change()

    async def taken_through(self, checkpoint: int) -> bool:
        """The consumer took every event up to `checkpoint`: clears a failure at or below it (True
        when it did)."""
        failure = self.failure
        if failure is None or checkpoint < failure.sequence:
            return False
        self.failure = None
        self.on_state(None)
        self.log.info(
            self.messages.cleared,
            extra={
                self.messages.key: self.source,
                "sequence": failure.sequence,
                "checkpoint": checkpoint,
                "failed_s": round(time.time() - failure.since),
            },
        )
        if self.on_change is not None:
            await self.on_change()
        return True


async def set_health(server: ServerHandle | None, service: str, failures: Mapping[str, Any]) -> None:
    """`service` is NOT_SERVING while `failures` names any source, else SERVING (no server: nothing)."""
    if server is None:
        return
    status = (
        health_pb2.HealthCheckResponse.NOT_SERVING if failures else health_pb2.HealthCheckResponse.SERVING
    )
    await server.health.set(service, status)


class _Gauge(Protocol):
    def set(self, value: float) -> None: ...


class SourceConsumer:
    def __init__(
        self,
        source: str,
        address: str | Connection,
        tracker: FailureTracker,
        *,
        logger: logging.Logger,
        connected: _Gauge,
    ) -> None:
        self.source = source
        self.connection = address if isinstance(address, Connection) else Connection.at(address, name=source)
        self.tracker = tracker
        self._logger = logger
        self._connected = connected

    def _follower(
        self, events: EventSource[Any], checkpoint: Checkpoint, **options: Any
    ) -> EventFollower[Any]:
        """The EventFollower of this source (`options`: prefetch, max_events)."""
        return EventFollower(
            events,
            checkpoint=checkpoint,
            backoff_initial_s=BACKOFF_START_S,
            backoff_max_s=BACKOFF_MAX_S,
            check_gaps=False,  # the consumer's store or state refuses a gap and names the event
            logger=self._logger,
            log_extra={self.tracker.messages.key: self.source},
            on_connected=lambda up: self._connected.set(1 if up else 0),
            **options,
        )

    @property
    def address(self) -> str:
        return self.connection.address

    @property
    def failure(self) -> SourceFailure | None:
        """The event that cannot be taken, while it cannot."""
        return self.tracker.failure

    async def run(self) -> None:
        """Consume until cancelled."""
        poller = asyncio.create_task(self._poll(), name=f"status-{self.source}")
        try:
            await self._consume()
        finally:
            poller.cancel()
            await asyncio.gather(poller, return_exceptions=True)
            self._connected.set(0)
            await self.connection.close()

    async def _consume(self) -> None:
        raise NotImplementedError

    async def _poll(self) -> None:
        raise NotImplementedError

"""Following a numbered event stream across reconnects: `follow_events(source, from_sequence)`.

A source is one stream of events that carry increasing sequences, opened from a sequence:
MatchingClient.events() (StreamEvents), AccountsClient.account_events() (StreamAccountEvents),
AccountsClient.user_events(user_id) (StreamUserEvents; a user's events are a subset of the accounts
sequence, so they are increasing but not contiguous).

    async for batch in follow_events(matching.events(), from_sequence=1):
        apply(batch.events)            # batch.first .. batch.last

or, when the caller keeps the checkpoint (and must resume from it, e.g. one stored in a database):

    follower = EventFollower(source, checkpoint=read_checkpoint)   # sync or async callable
    async for batch in follower.batches():
        store(batch.events)            # the next (re)connection starts at read_checkpoint() + 1

Guarantees: every (re)connection starts right after the checkpoint (the callback's answer, else the last
sequence yielded), and events at or below it (an upstream's resend) are dropped, so across reconnects no
sequence is yielded twice and none is skipped; for a contiguous source a stream that skips sequences
raises EventGap (check_gaps=False leaves gap checks to the caller, e.g. a store that reports them).

Failures: the stream failing (UNAVAILABLE while the upstream restarts, or any other status) or ending
reconnects after an exponential backoff with jitter (backoff_initial_s doubling to backoff_max_s, reset
once events flow). OUT_OF_RANGE (the upstream no longer has the events after the checkpoint, or is behind
it) is logged at ERROR and raised as EventsOutOfRange: an operator must look, and skipping would lose
events. Logging: the first failure is one WARNING line and the follower turns `quiet` (connects and
repeated failures at DEBUG) until events flow again ("event stream back"); the caller may set `quiet`
too (after a failure of its own).

Read-ahead: with prefetch=N a reader task keeps up to N responses queued while the caller works, and
each batch takes everything queued (up to max_events events): batches grow with the event rate and a
full queue pushes back on the stream (gRPC flow control).

Stopping: cancel the task, or leave the loop; the stream is cancelled when the generator is closed
(`async with contextlib.aclosing(follower.batches()) as batches:` closes it at once; a plain `break`
leaves that to the garbage collector).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import random
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

import grpc

from services.clients.errors import ClientError, EventGap, EventsOutOfRange

log = logging.getLogger(__name__)


class Sequenced(Protocol):
    @property
    def sequence(self) -> int: ...


E = TypeVar("E", bound=Sequenced)
E_co = TypeVar("E_co", bound=Sequenced, covariant=True)


class EventSource(Protocol[E_co]):
    """One upstream event stream, opened from a sequence."""

    @property
    def name(self) -> str: ...  # the upstream's source name ("matching-0", "accounts-0")

    @property
    def address(self) -> str: ...

    @property
    def contiguous(self) -> bool: ...  # every sequence is present (matching, accounts streams)

    def open(self, from_sequence: int) -> AsyncIterator[Sequence[E_co]]:
        """The stream's responses (their events), from `from_sequence` on; errors as ClientError."""
        ...


@dataclass(frozen=True)
class EventBatch(Generic[E]):
    """Events of one source, in order, none at or below the previous batch's last."""

    events: Sequence[E]

    @property
    def first(self) -> int:
        return int(self.events[0].sequence)

    @property
    def last(self) -> int:
        return int(self.events[-1].sequence)

    def __len__(self) -> int:
        return len(self.events)


@contextlib.asynccontextmanager
async def closing(stream: AsyncIterator[Any]) -> AsyncIterator[None]:
    """Close an async iterator (an async generator: its `finally` cancels the gRPC call) on exit."""
    try:
        yield
    finally:
        aclose = getattr(stream, "aclose", None)
        if aclose is not None:
            await aclose()


class _End:
    __slots__ = ("error",)

    def __init__(self, error: ClientError | None) -> None:
        self.error = error


Checkpoint = Callable[[], "int | Awaitable[int]"]


class EventFollower(Generic[E]):
    def __init__(
        self,
        source: EventSource[E],
        *,
        checkpoint: Checkpoint | None = None,
        backoff_initial_s: float = 0.05,
        backoff_max_s: float = 2.0,
        jitter: float = 0.2,
        prefetch: int = 0,
        max_events: int = 20_000,
        check_gaps: bool = True,
        logger: logging.Logger | None = None,
        log_extra: Mapping[str, Any] | None = None,
        on_connected: Callable[[bool], None] | None = None,
    ) -> None:
        self.source = source
        self.checkpoint = checkpoint
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.jitter = jitter
        self.prefetch = prefetch
        self.max_events = max(1, max_events)
        self.check_gaps = check_gaps and source.contiguous
        self.log = logger or log
        self.extra: dict[str, Any] = {"source": source.name, **(log_extra or {})}
        self.on_connected = on_connected
        self.last = 0  # the last sequence yielded (or the checkpoint the current stream started after)
        self.quiet = False  # connects and repeated failures log at DEBUG
        self.connected = False
        self.connects = 0  # streams opened
        self.queued = 0  # responses read ahead and not yet yielded
        self._down = False  # a failure was logged and no event came since
        self._backoff = backoff_initial_s

    # --- the loop --------------------------------------------------------------------------------

    async def batches(self, from_sequence: int | None = None) -> AsyncGenerator[EventBatch[E], None]:
        """Batches of events, reconnecting forever; raises EventsOutOfRange, EventGap, or what the
        checkpoint callback raises. `from_sequence` (the first sequence wanted) is used for the first
        stream when given, else the checkpoint callback's answer + 1, else the last yielded + 1."""
        first = True
        while True:
            if first and from_sequence is not None:
                start = max(1, from_sequence)
            else:
                start = await self._resume_point()
            first = False
            self.last = start - 1
            self.connects += 1
            self._log(
                logging.DEBUG if self.quiet else logging.INFO,
                "following event stream",
                address=self.source.address,
                from_sequence=start,
            )
            try:
                responses = self._responses(start)
                async with closing(responses):
                    async for events in responses:
                        fresh = self._fresh(events)
                        if not fresh:
                            continue
                        if self._down:
                            self._log(logging.INFO, "event stream back", from_sequence=fresh[0].sequence)
                            self._down = False
                            self.quiet = False
                        self._backoff = self.backoff_initial_s
                        self.last = int(fresh[-1].sequence)
                        yield EventBatch(fresh)
                self._log(
                    logging.DEBUG if self.quiet else logging.INFO,
                    "event stream ended; reconnecting",
                    retry_s=round(self._backoff, 3),
                )
            except EventGap:
                raise
            except ClientError as err:
                if err.code == grpc.StatusCode.OUT_OF_RANGE:
                    self._log(
                        logging.ERROR,
                        "upstream no longer has the events after our checkpoint (or is behind it); "
                        "following stops: an operator must look, skipping would lose events",
                        address=self.source.address,
                        from_sequence=start,
                        reason=err.reason,
                        details=err.message,
                    )
                    raise EventsOutOfRange(
                        err.code,
                        err.message,
                        reason=err.reason,
                        metadata={**err.metadata, "from_sequence": str(start)},
                        service=err.service,
                        address=err.address,
                        method=err.method,
                    ) from err
                self._log(
                    logging.DEBUG if self.quiet else logging.WARNING,
                    "event stream down; retrying",
                    address=self.source.address,
                    code=err.code_name,
                    reason=err.reason,
                    details=err.message,
                    retry_s=round(self._backoff, 3),
                )
            finally:
                self._set_connected(False)
            self.quiet = True
            self._down = True
            await asyncio.sleep(self._backoff * (1.0 + self.jitter * random.random()))
            self._backoff = min(self._backoff * 2, self.backoff_max_s)

    async def _resume_point(self) -> int:
        if self.checkpoint is None:
            return self.last + 1
        value = self.checkpoint()
        if inspect.isawaitable(value):
            value = await value
        return int(value) + 1

    def _fresh(self, events: Sequence[E]) -> Sequence[E]:
        """`events` without those at or below the last yielded; EventGap when a contiguous source
        skipped sequences."""
        n = len(events)
        if not n:
            return events
        last = self.last
        i = 0
        while i < n and events[i].sequence <= last:
            i += 1
        if i == n:
            return ()
        fresh = events[i:] if i else events
        if self.check_gaps:
            head, tail = int(fresh[0].sequence), int(fresh[-1].sequence)
            if head != last + 1 or tail - head != len(fresh) - 1:
                expected = last + 1
                got = head
                if head == expected:  # the gap is inside the response: find it
                    for k in range(1, len(fresh)):
                        if fresh[k].sequence != head + k:
                            expected, got = head + k, int(fresh[k].sequence)
                            break
                raise EventGap(
                    grpc.StatusCode.DATA_LOSS,
                    f"{self.source.name}: expected event {expected}, got {got}",
                    reason="SEQUENCE_GAP",
                    metadata={"expected": str(expected), "got": str(got)},
                    service=self.source.name,
                    address=self.source.address,
                )
        return fresh

    # --- reading -----------------------------------------------------------------------------------

    async def _responses(self, start: int) -> AsyncIterator[Sequence[E]]:
        stream = self.source.open(start)
        if self.prefetch <= 0:
            async with closing(stream):
                async for events in stream:
                    self._set_connected(True)
                    yield events
            return
        queue: asyncio.Queue[Sequence[E] | _End] = asyncio.Queue(maxsize=self.prefetch)

        async def read() -> None:
            try:
                async with closing(stream):
                    async for events in stream:
                        self._set_connected(True)
                        if events:
                            await queue.put(events)
                            self.queued = queue.qsize()
            except ClientError as err:
                await queue.put(_End(err))
                return
            await queue.put(_End(None))

        reader = asyncio.create_task(read(), name=f"follow-read-{self.source.name}")
        try:
            while True:
                item = await queue.get()
                if isinstance(item, _End):
                    if item.error is not None:
                        raise item.error
                    return
                end: _End | None = None
                if queue.empty() or len(item) >= self.max_events:
                    self.queued = queue.qsize()
                    yield item  # nothing to merge: the response as it came (no copy)
                    continue
                batch = list(item)
                while len(batch) < self.max_events and not queue.empty():
                    more = queue.get_nowait()
                    if isinstance(more, _End):
                        end = more
                        break
                    batch.extend(more)
                self.queued = queue.qsize()
                yield batch
                if end is not None:
                    if end.error is not None:
                        raise end.error
                    return
        finally:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
            self.queued = 0

    def _set_connected(self, value: bool) -> None:
        if value != self.connected:
            self.connected = value
            if self.on_connected is not None:
                self.on_connected(value)

    def _log(self, level: int, message: str, **fields: Any) -> None:
        self.log.log(level, message, extra={**self.extra, **fields})


def follow_events(
    source: EventSource[E], from_sequence: int | None = None, **options: Any
) -> AsyncGenerator[EventBatch[E], None]:
    """Batches of `source`'s events from `from_sequence` on, across reconnects (see EventFollower for
    the options: checkpoint, backoff, prefetch, max_events, check_gaps, logger, log_extra)."""
    return EventFollower(source, **options).batches(from_sequence)


# --- the sources -------------------------------------------------------------------------------------


class StreamSource(Generic[E]):
    """An EventSource over a client's server-streaming method whose responses have `events`."""

    def __init__(
        self,
        name: str,
        address: Callable[[], str],
        open_stream: Callable[[int], AsyncIterator[Any]],
        *,
        contiguous: bool,
    ) -> None:
        self._name = name
        self._address = address
        self._open = open_stream
        self._contiguous = contiguous

    @property
    def name(self) -> str:
        return self._name

    @property
    def address(self) -> str:
        return self._address()

    @property
    def contiguous(self) -> bool:
        return self._contiguous

    async def open(self, from_sequence: int) -> AsyncIterator[Sequence[E]]:
        stream = self._open(from_sequence)
        async with closing(stream):
            async for response in stream:
                yield response.events

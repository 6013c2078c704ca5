"""Request-stream pipelining for the bidirectional streaming handlers (accounts SubmitOrders, matching
SubmitCommands): a reader task turns each request into an item (typically the future of its host
batch) while the handler answers the items before it, so batches pipeline.

Use with services.common.rpc.handles_stream_errors on the handler: an ExchangeError of the reader
(a malformed request, a sequence gap) ends the stream with its status, after the answers to what was
read before it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Pipeline(Generic[T]):
    """`read(pipeline)` runs as a task: it reads the request stream and `put`s one item per request,
    waiting while `maxsize` items are unanswered. Iterating the pipeline yields the items in order;
    when the reader has ended, its error (if any) is raised after the last item. Leaving the
    iteration (the call ended) cancels the reader."""

    def __init__(self, read: Callable[[Pipeline[T]], Awaitable[None]], *, maxsize: int) -> None:
        self._read = read
        self._queue: asyncio.Queue[tuple[T] | None] = asyncio.Queue(maxsize=maxsize)
        self._queued = 0  # items put and not yet taken

    async def put(self, item: T) -> None:
        await self._queue.put((item,))
        self._queued += 1

    def has_next(self) -> bool:
        """True when the next item is already queued (its answer can be coalesced with this one's)."""
        return self._queued > 0

    async def _run(self) -> None:
        try:
            await self._read(self)
        finally:
            await self._queue.put(None)

    async def __aiter__(self) -> AsyncIterator[T]:
        task = asyncio.create_task(self._run())
        try:
            while (entry := await self._queue.get()) is not None:
                self._queued -= 1
                yield entry[0]
            await task  # the reader's error, if it failed
        finally:
            task.cancel()

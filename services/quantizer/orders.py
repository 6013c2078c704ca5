"""Order entry for the executor over one AccountsService.SubmitOrders stream: the placements and
cancels the workers ask for are sent in batches (whatever is queued while the previous batches are in
flight, at most `max_batch`), so a burst of reverse orders costs one request, not one call each.
Accounts applies a stream's commands in order; each caller gets its command's OrderCommandResult.

When the stream fails, every command in flight fails with StreamBroken (the callers retry: placements
carry their client order id, so a resend of one that was applied is a duplicate) and a new stream is
opened after a short backoff."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator

from exchange.v1 import accounts_service_pb2 as apb

from services.clients.accounts import AccountsClient
from services.clients.errors import ClientError
from services.quantizer.timing import ANSWERED, STREAM_WAIT

log = logging.getLogger(__name__)

Pending = tuple[apb.OrderCommand, "asyncio.Future[apb.OrderCommandResult]"]


class StreamBroken(Exception):
    """The SubmitOrders stream ended before answering the command."""


class OrderStream:
    def __init__(self, accounts: AccountsClient, *, max_batch: int = 500, in_flight: int = 4) -> None:
        self.accounts = accounts
        self.max_batch = max_batch
        self.queue: asyncio.Queue[Pending] = asyncio.Queue()
        self.in_flight = in_flight
        self.inflight: dict[int, list[Pending]] = {}
        self.batch_id = 0
        self.batches = 0
        self.commands = 0
        self.task: asyncio.Task[None] | None = None
        self.queued_at: dict[int, float] = {}  # id(future) -> monotonic time queued (timing)
        self.sent_at: dict[int, float] = {}  # batch id -> monotonic time sent (timing)

    def start(self) -> None:
        self.task = asyncio.create_task(self._run(), name="quantizer-order-stream")

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.task

    async def call(self, command: apb.OrderCommand) -> apb.OrderCommandResult:
        fut: asyncio.Future[apb.OrderCommandResult] = asyncio.get_running_loop().create_future()
        self.queued_at[id(fut)] = time.monotonic()
        self.queue.put_nowait((command, fut))
        try:
            return await fut
        finally:
            self.queued_at.pop(id(fut), None)

    async def _requests(self, window: asyncio.Semaphore) -> AsyncIterator[apb.SubmitOrdersRequest]:
        """One stream's requests. The window is taken before a command leaves the queue, so a stream
        that ends while this waits loses nothing (each stream has a window of its own)."""
        while True:
            await window.acquire()
            first = await self.queue.get()
            batch = [first]
            while len(batch) < self.max_batch and not self.queue.empty():
                batch.append(self.queue.get_nowait())
            batch = [p for p in batch if not p[1].done()]
            if not batch:
                window.release()
                continue
            self.batch_id += 1
            self.inflight[self.batch_id] = batch
            self.batches += 1
            self.commands += len(batch)
            now = time.monotonic()
            self.sent_at[self.batch_id] = now
            for _, fut in batch:
                STREAM_WAIT.observe(now - self.queued_at.get(id(fut), now))
            yield apb.SubmitOrdersRequest(batch_id=self.batch_id, commands=[c for c, _ in batch])

    async def _run(self) -> None:
        delay = 0.05
        while True:
            window = asyncio.Semaphore(self.in_flight)
            try:
                async for resp in self.accounts.submit_orders(self._requests(window)):
                    delay = 0.05
                    batch = self.inflight.pop(resp.batch_id, None)
                    window.release()
                    sent = self.sent_at.pop(resp.batch_id, None)
                    if sent is not None:
                        ANSWERED.observe(time.monotonic() - sent)
                    if batch is None:
                        continue
                    for (_, fut), result in zip(batch, resp.results, strict=False):
                        if not fut.done():
                            fut.set_result(result)
                    for _, fut in batch[len(resp.results) :]:
                        if not fut.done():
                            fut.set_exception(StreamBroken("no result for the command"))
            except asyncio.CancelledError:
                self._fail_inflight()
                raise
            except ClientError as exc:
                log.warning("order stream failed", extra={"code": exc.code_name, "reason": exc.reason})
            self._fail_inflight()
            await asyncio.sleep(delay)
            delay = min(2.0, delay * 2)

    def _fail_inflight(self) -> None:
        inflight, self.inflight = self.inflight, {}
        self.sent_at.clear()
        for batch in inflight.values():
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(StreamBroken("the order stream broke"))

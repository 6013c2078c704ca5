"""MatchingClient: MatchingService (services.matching, one per shard), typed and thin.

The reads are retried on UNAVAILABLE; events(max_batch) is StreamEvents as an event source for
services.clients.follow. Accounts' outbox link (services.accounts.links.Forwarder) keeps its own
long-lived SubmitCommands stream of pre-serialized commands; submit_commands here is the one-shot
form (tools, tests, failover checks): one source's chain of commands, sent until acknowledged, at the
shard's leader (a follower's NOT_LEADER and a leader that went away are retried, see
services.clients.base: the shard drops resends, so sending again is safe).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Sequence

import grpc
from exchange.v1 import events_pb2 as ev
from exchange.v1 import matching_service_pb2 as pb

from services.clients.base import ServiceClient, is_not_leader
from services.clients.errors import ClientError
from services.clients.follow import StreamSource
from services.clients.resolver import UnknownService
from services.clients.retry import RetryPolicy

Options = RetryPolicy | None

SUBMIT_CHUNK = 1000  # commands per SubmitCommandsRequest


class _LeaderMoved(Exception):
    """The resolver named another address for the shard while an attempt was in flight."""


class MatchingClient(ServiceClient):
    SERVICE = "exchange.v1.MatchingService"
    NAME = "matching-0"
    DEFAULT_TIMEOUT_S = 5.0

    async def get_depth(
        self, request: pb.GetDepthRequest, *, timeout: float | None = None, retry: Options = None
    ) -> pb.GetDepthResponse:
        return await self._unary(
            "GetDepth", request, pb.GetDepthResponse, safe=True, timeout=timeout, retry=retry
        )

    async def list_book_orders(
        self, request: pb.ListBookOrdersRequest, *, timeout: float | None = None, retry: Options = None
    ) -> pb.ListBookOrdersResponse:
        return await self._unary(
            "ListBookOrders", request, pb.ListBookOrdersResponse, safe=True, timeout=timeout, retry=retry
        )

    async def get_matching_status(
        self,
        request: pb.GetMatchingStatusRequest | None = None,
        *,
        timeout: float | None = None,
        retry: Options = None,
    ) -> pb.GetMatchingStatusResponse:
        return await self._unary(
            "GetMatchingStatus",
            request if request is not None else pb.GetMatchingStatusRequest(),
            pb.GetMatchingStatusResponse,
            safe=True,
            timeout=timeout,
            retry=retry,
        )

    async def export_market(
        self, request: pb.ExportMarketRequest, *, timeout: float | None = None, retry: Options = None
    ) -> pb.ExportMarketResponse:
        """Admin: hand a halted market's book over (a repeat answers the same book: retried)."""
        return await self._unary(
            "ExportMarket", request, pb.ExportMarketResponse, safe=True, timeout=timeout, retry=retry
        )

    async def import_market(
        self, request: pb.ImportMarketRequest, *, timeout: float | None = None, retry: Options = None
    ) -> pb.ImportMarketResponse:
        """Admin: take over an exported book (a repeat changes nothing: retried)."""
        return await self._unary(
            "ImportMarket", request, pb.ImportMarketResponse, safe=True, timeout=timeout, retry=retry
        )

    async def open_market(
        self, request: pb.OpenMarketRequest, *, timeout: float | None = None, retry: Options = None
    ) -> pb.OpenMarketResponse:
        """Admin: an empty book for a market added while running (a repeat changes nothing)."""
        return await self._unary(
            "OpenMarket", request, pb.OpenMarketResponse, safe=True, timeout=timeout, retry=retry
        )

    def stream_events(
        self, request: pb.StreamEventsRequest, *, timeout: float | None = None
    ) -> AsyncGenerator[pb.StreamEventsResponse, None]:
        """The shard's events (one stream, no reconnection: see events)."""
        return self._stream("StreamEvents", request, pb.StreamEventsResponse, timeout=timeout)

    def events(self, max_batch: int = 2000, source: str = "") -> StreamSource[ev.MatchingEvent]:
        """StreamEvents as an event source for follow_events (contiguous sequences); `source` names it
        in logs (default: the name this client was dialled by, i.e. the shard's)."""
        return StreamSource(
            source or self.name,
            lambda: self.address,
            lambda start: self.stream_events(
                pb.StreamEventsRequest(from_sequence=start, max_batch=max_batch)
            ),
            contiguous=True,
        )

    async def submit_commands(
        self, source: str, commands: Sequence[ev.MatchingCommand], *, timeout: float | None = None
    ) -> int:
        """Send `commands` of `source` (a chain: each names the previous one's source_sequence) on
        one SubmitCommands stream and wait until the shard acknowledged the last one; returns the
        acknowledged sequence. The caller must present `source`'s own (peer) credentials. Retried
        within the deadline when a follower refuses (NOT_LEADER: at the leader it names / the resolver
        re-reads) and when the shard is UNAVAILABLE (its leader went away: at the next one). With a
        resolver that announces changes (ZooKeeperResolver), an attempt in flight is abandoned and a
        wait between attempts cut short as soon as it names another leader (a frozen leader holds
        its calls until the deadline; the next leader answers). Other refusals (SEQUENCE_GAP, ...)
        raise at once."""
        if not commands:
            return 0
        last = commands[-1].source_sequence
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (self.timeout if timeout is None else timeout)
        moved = asyncio.Event()  # the resolver named another address for the shard
        resolver = self.connection.resolver
        unwatch = None
        if resolver is not None and not self.connection._fixed:
            canonical = resolver.canonical(self.name)

            def changed(name: str, address: str) -> None:  # any thread
                if name == canonical and address:
                    loop.call_soon_threadsafe(moved.set)

            unwatch = resolver.watch(changed)
        attempt = 0
        redirects = 0
        try:
            while True:
                attempt += 1
                moved.clear()
                left = max(deadline - loop.time(), 0.001)
                try:
                    return await self._submit_watching(source, commands, last, left, moved)
                except ClientError as failure:
                    error = failure
                except UnknownService:  # the resolver names no leader (an election is under way)
                    if attempt == 1:
                        raise  # a name it never knew
                    error = self.no_leader_error("SubmitCommands", attempt)
                except _LeaderMoved:  # the attempt went to a leader that is no longer (frozen, gone)
                    continue
                if is_not_leader(error):
                    redirects += 1
                    if not await self.follow_leader(error):
                        raise error
                    pause = self.redirect_wait(redirects)
                elif error.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED):
                    if attempt > 64:
                        raise error
                    pause = min(0.05 * 2 ** min(attempt - 1, 4), 0.5) * (1.0 + 0.2 * self._rand())
                else:
                    raise error
                if loop.time() + pause >= deadline:
                    raise error
                with contextlib.suppress(TimeoutError):  # or sooner: a new leader was named
                    await asyncio.wait_for(moved.wait(), pause)
        finally:
            if unwatch is not None:
                unwatch()

    async def _submit_watching(
        self,
        source: str,
        commands: Sequence[ev.MatchingCommand],
        last: int,
        timeout: float,
        moved: asyncio.Event,
    ) -> int:
        """One attempt, abandoned (_LeaderMoved) when `moved` is set meanwhile."""
        attempt = asyncio.ensure_future(self._submit_once(source, commands, last, timeout))
        mover = asyncio.ensure_future(moved.wait())
        try:
            await asyncio.wait({attempt, mover}, return_when=asyncio.FIRST_COMPLETED)
            if attempt.done():
                return attempt.result()
            raise _LeaderMoved()
        finally:
            for t in (attempt, mover):
                if not t.done():
                    t.cancel()
            await asyncio.gather(attempt, mover, return_exceptions=True)

    async def _submit_once(
        self, source: str, commands: Sequence[ev.MatchingCommand], last: int, timeout: float
    ) -> int:
        """One stream: the source header, then (once the shard answered where it resumes: a refusal
        such as NOT_LEADER comes before any command is written) the commands after that point."""
        resume: asyncio.Future[int] = asyncio.get_running_loop().create_future()

        async def requests() -> AsyncIterator[pb.SubmitCommandsRequest]:
            yield pb.SubmitCommandsRequest(source=source)
            start = await resume
            todo = [c for c in commands if c.source_sequence > start]
            for i in range(0, len(todo), SUBMIT_CHUNK):
                yield pb.SubmitCommandsRequest(commands=todo[i : i + SUBMIT_CHUNK])

        acked = 0
        responses = self._bidi("SubmitCommands", requests(), pb.SubmitCommandsResponse, timeout=timeout)
        try:
            async for response in responses:
                acked = max(acked, response.acknowledged_sequence)
                if not resume.done():
                    resume.set_result(acked)
                if acked >= last:
                    return acked
        finally:
            if not resume.done():
                resume.cancel()
            await responses.aclose()
        raise ClientError(
            grpc.StatusCode.UNAVAILABLE,
            f"{self.name}: the stream ended with {acked} acknowledged, not {last}",
            service=self.name,
            address=self._address_or_none(),
            method="SubmitCommands",
        )

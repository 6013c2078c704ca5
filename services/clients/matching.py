"""MatchingClient: MatchingService (services.matching, one per shard), typed and thin.

The reads are retried on UNAVAILABLE; events(max_batch) is StreamEvents as an event source for
services.clients.follow. SubmitCommands (accounts' outbox link, services.accounts.links.Forwarder) is
not here: it is one peer's stream of pre-serialized commands.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator

from exchange.v1 import events_pb2 as ev
from exchange.v1 import matching_service_pb2 as pb

from services.clients.base import ServiceClient
from services.clients.follow import StreamSource
from services.clients.retry import RetryPolicy

Options = RetryPolicy | None


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

"""MarketClient: MarketService (services.market), typed and thin; the queries are reads (retried on
UNAVAILABLE); the Subscribe* streams are plain server streams (no deadline unless given).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator

from exchange.v1 import market_service_pb2 as pb

from services.clients.base import ServiceClient
from services.clients.retry import RetryPolicy

Options = RetryPolicy | None


class MarketClient(ServiceClient):
    SERVICE = "exchange.v1.MarketService"
    NAME = "market"
    DEFAULT_TIMEOUT_S = 5.0

    async def get_klines(
        self, request: pb.GetKlinesRequest, *, timeout: float | None = None, retry: Options = None
    ) -> pb.GetKlinesResponse:
        return await self._unary(
            "GetKlines", request, pb.GetKlinesResponse, safe=True, timeout=timeout, retry=retry
        )

    async def get_ticker(
        self, request: pb.GetTickerRequest, *, timeout: float | None = None, retry: Options = None
    ) -> pb.GetTickerResponse:
        return await self._unary(
            "GetTicker", request, pb.GetTickerResponse, safe=True, timeout=timeout, retry=retry
        )

    async def list_tickers(
        self,
        request: pb.ListTickersRequest | None = None,
        *,
        timeout: float | None = None,
        retry: Options = None,
    ) -> pb.ListTickersResponse:
        return await self._unary(
            "ListTickers",
            request if request is not None else pb.ListTickersRequest(),
            pb.ListTickersResponse,
            safe=True,
            timeout=timeout,
            retry=retry,
        )

    async def list_recent_trades(
        self, request: pb.ListRecentTradesRequest, *, timeout: float | None = None, retry: Options = None
    ) -> pb.ListRecentTradesResponse:
        return await self._unary(
            "ListRecentTrades", request, pb.ListRecentTradesResponse, safe=True, timeout=timeout, retry=retry
        )

    async def get_market_depth(
        self, request: pb.GetMarketDepthRequest, *, timeout: float | None = None, retry: Options = None
    ) -> pb.GetMarketDepthResponse:
        return await self._unary(
            "GetMarketDepth", request, pb.GetMarketDepthResponse, safe=True, timeout=timeout, retry=retry
        )

    async def get_market_data_status(
        self,
        request: pb.GetMarketDataStatusRequest | None = None,
        *,
        timeout: float | None = None,
        retry: Options = None,
    ) -> pb.GetMarketDataStatusResponse:
        return await self._unary(
            "GetMarketDataStatus",
            request if request is not None else pb.GetMarketDataStatusRequest(),
            pb.GetMarketDataStatusResponse,
            safe=True,
            timeout=timeout,
            retry=retry,
        )

    def subscribe_klines(
        self, request: pb.SubscribeKlinesRequest, *, timeout: float | None = None
    ) -> AsyncGenerator[pb.SubscribeKlinesResponse, None]:
        return self._stream("SubscribeKlines", request, pb.SubscribeKlinesResponse, timeout=timeout)

    def subscribe_ticker(
        self, request: pb.SubscribeTickerRequest, *, timeout: float | None = None
    ) -> AsyncGenerator[pb.SubscribeTickerResponse, None]:
        return self._stream("SubscribeTicker", request, pb.SubscribeTickerResponse, timeout=timeout)

    def subscribe_depth(
        self, request: pb.SubscribeDepthRequest, *, timeout: float | None = None
    ) -> AsyncGenerator[pb.SubscribeDepthResponse, None]:
        return self._stream("SubscribeDepth", request, pb.SubscribeDepthResponse, timeout=timeout)

    def subscribe_trades(
        self, request: pb.SubscribeTradesRequest, *, timeout: float | None = None
    ) -> AsyncGenerator[pb.SubscribeTradesResponse, None]:
        return self._stream("SubscribeTrades", request, pb.SubscribeTradesResponse, timeout=timeout)

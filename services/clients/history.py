"""HistoryClient: HistoryService (services.history), typed and thin; every call is a read (retried
on UNAVAILABLE). SQL queries get a longer default deadline (10 s).
"""

from __future__ import annotations

from exchange.v1 import history_service_pb2 as pb

from services.clients.base import ServiceClient
from services.clients.retry import RetryPolicy

Options = RetryPolicy | None


class HistoryClient(ServiceClient):
    SERVICE = "exchange.v1.HistoryService"
    NAME = "history"
    DEFAULT_TIMEOUT_S = 10.0

    async def get_order_history(
        self, request: pb.GetOrderHistoryRequest, *, timeout: float | None = None, retry: Options = None
    ) -> pb.GetOrderHistoryResponse:
        return await self._unary(
            "GetOrderHistory", request, pb.GetOrderHistoryResponse, safe=True, timeout=timeout, retry=retry
        )

    async def list_finished_orders(
        self, request: pb.ListFinishedOrdersRequest, *, timeout: float | None = None, retry: Options = None
    ) -> pb.ListFinishedOrdersResponse:
        return await self._unary(
            "ListFinishedOrders",
            request,
            pb.ListFinishedOrdersResponse,
            safe=True,
            timeout=timeout,
            retry=retry,
        )

    async def list_order_trades(
        self, request: pb.ListOrderTradesRequest, *, timeout: float | None = None, retry: Options = None
    ) -> pb.ListOrderTradesResponse:
        return await self._unary(
            "ListOrderTrades", request, pb.ListOrderTradesResponse, safe=True, timeout=timeout, retry=retry
        )

    async def list_user_trades(
        self, request: pb.ListUserTradesRequest, *, timeout: float | None = None, retry: Options = None
    ) -> pb.ListUserTradesResponse:
        return await self._unary(
            "ListUserTrades", request, pb.ListUserTradesResponse, safe=True, timeout=timeout, retry=retry
        )

    async def list_balance_history(
        self, request: pb.ListBalanceHistoryRequest, *, timeout: float | None = None, retry: Options = None
    ) -> pb.ListBalanceHistoryResponse:
        return await self._unary(
            "ListBalanceHistory",
            request,
            pb.ListBalanceHistoryResponse,
            safe=True,
            timeout=timeout,
            retry=retry,
        )

    async def get_history_status(
        self,
        request: pb.GetHistoryStatusRequest | None = None,
        *,
        timeout: float | None = None,
        retry: Options = None,
    ) -> pb.GetHistoryStatusResponse:
        return await self._unary(
            "GetHistoryStatus",
            request if request is not None else pb.GetHistoryStatusRequest(),
            pb.GetHistoryStatusResponse,
            safe=True,
            timeout=timeout,
            retry=retry,
        )

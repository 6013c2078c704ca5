"""AccountsClient: AccountsService (services.accounts), typed and thin.

Retried on UNAVAILABLE (see services.clients.retry): the reads; Deposit and Withdraw when they carry a
business_id (accounts applies one business id once); PlaceOrder when it carries a client_order_id (a
repeat answers the same order, duplicate=True); OpenSubAccount (idempotent by owner and label) and
Transfer (idempotent by transfer_id). Never retried: CancelOrder, CancelAllOrders, AmendOrder,
SubmitOrders (a repeat may answer differently from the first).

account_events() and user_events(user_id) are event sources for services.clients.follow.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterable

from exchange.v1 import accounts_service_pb2 as pb
from exchange.v1 import events_pb2 as ev

from services.clients.base import ServiceClient
from services.clients.follow import StreamSource
from services.clients.retry import RetryPolicy

Options = RetryPolicy | None


class AccountsClient(ServiceClient):
    SERVICE = "exchange.v1.AccountsService"
    NAME = "accounts"
    DEFAULT_TIMEOUT_S = 5.0

    async def list_assets(
        self,
        request: pb.ListAssetsRequest | None = None,
        *,
        timeout: float | None = None,
        retry: Options = None,
    ) -> pb.ListAssetsResponse:
        return await self._unary(
            "ListAssets",
            request if request is not None else pb.ListAssetsRequest(),
            pb.ListAssetsResponse,
            safe=True,
            timeout=timeout,
            retry=retry,
        )

    async def list_markets(
        self,
        request: pb.ListMarketsRequest | None = None,
        *,
        timeout: float | None = None,
        retry: Options = None,
    ) -> pb.ListMarketsResponse:
        return await self._unary(
            "ListMarkets",
            request if request is not None else pb.ListMarketsRequest(),
            pb.ListMarketsResponse,
            safe=True,
            timeout=timeout,
            retry=retry,
        )

    async def deposit(
        self, request: pb.DepositRequest, *, timeout: float | None = None, retry: Options = None
    ) -> pb.DepositResponse:
        """Retried only with a business_id (idempotent)."""
        return await self._unary(
            "Deposit",
            request,
            pb.DepositResponse,
            safe=bool(request.business_id),
            timeout=timeout,
            retry=retry,
        )

    async def withdraw(
        self, request: pb.WithdrawRequest, *, timeout: float | None = None, retry: Options = None
    ) -> pb.WithdrawResponse:
        """Retried only with a business_id (idempotent)."""
        return await self._unary(
            "Withdraw",
            request,
            pb.WithdrawResponse,
            safe=bool(request.business_id),
            timeout=timeout,
            retry=retry,
        )

    async def get_balances(
        self, request: pb.GetBalancesRequest, *, timeout: float | None = None, retry: Options = None
    ) -> pb.GetBalancesResponse:
        return await self._unary(
            "GetBalances", request, pb.GetBalancesResponse, safe=True, timeout=timeout, retry=retry
        )

    async def place_order(
        self, request: pb.PlaceOrderRequest, *, timeout: float | None = None, retry: Options = None
    ) -> pb.PlaceOrderResponse:
        """Retried only with a client_order_id (idempotent)."""
        return await self._unary(
            "PlaceOrder",
            request,
            pb.PlaceOrderResponse,
            safe=bool(request.client_order_id),
            timeout=timeout,
            retry=retry,
        )

    async def cancel_order(
        self, request: pb.CancelOrderRequest, *, timeout: float | None = None, retry: Options = None
    ) -> pb.CancelOrderResponse:
        return await self._unary(
            "CancelOrder", request, pb.CancelOrderResponse, safe=False, timeout=timeout, retry=retry
        )

    async def cancel_all_orders(
        self, request: pb.CancelAllOrdersRequest, *, timeout: float | None = None, retry: Options = None
    ) -> pb.CancelAllOrdersResponse:
        return await self._unary(
            "CancelAllOrders", request, pb.CancelAllOrdersResponse, safe=False, timeout=timeout, retry=retry
        )

    async def amend_order(
        self, request: pb.AmendOrderRequest, *, timeout: float | None = None, retry: Options = None
    ) -> pb.AmendOrderResponse:
        return await self._unary(
            "AmendOrder", request, pb.AmendOrderResponse, safe=False, timeout=timeout, retry=retry
        )

    async def get_order(
        self, request: pb.GetOrderRequest, *, timeout: float | None = None, retry: Options = None
    ) -> pb.GetOrderResponse:
        return await self._unary(
            "GetOrder", request, pb.GetOrderResponse, safe=True, timeout=timeout, retry=retry
        )

    async def list_open_orders(
        self, request: pb.ListOpenOrdersRequest, *, timeout: float | None = None, retry: Options = None
    ) -> pb.ListOpenOrdersResponse:
        return await self._unary(
            "ListOpenOrders", request, pb.ListOpenOrdersResponse, safe=True, timeout=timeout, retry=retry
        )

    async def get_accounts_status(
        self,
        request: pb.GetAccountsStatusRequest | None = None,
        *,
        timeout: float | None = None,
        retry: Options = None,
    ) -> pb.GetAccountsStatusResponse:
        return await self._unary(
            "GetAccountsStatus",
            request if request is not None else pb.GetAccountsStatusRequest(),
            pb.GetAccountsStatusResponse,
            safe=True,
            timeout=timeout,
            retry=retry,
        )

    async def open_sub_account(
        self, request: pb.OpenSubAccountRequest, *, timeout: float | None = None, retry: Options = None
    ) -> pb.OpenSubAccountResponse:
        """Idempotent by (owner, label): retried; a repeat answers the same sub-account (duplicate)."""
        return await self._unary(
            "OpenSubAccount", request, pb.OpenSubAccountResponse, safe=True, timeout=timeout, retry=retry
        )

    async def list_sub_accounts(
        self, request: pb.ListSubAccountsRequest, *, timeout: float | None = None, retry: Options = None
    ) -> pb.ListSubAccountsResponse:
        """One page of the owner's sub-accounts (in the order opened); next_page_token for the rest."""
        return await self._unary(
            "ListSubAccounts", request, pb.ListSubAccountsResponse, safe=True, timeout=timeout, retry=retry
        )

    async def transfer(
        self, request: pb.TransferRequest, *, timeout: float | None = None, retry: Options = None
    ) -> pb.TransferResponse:
        """Between an owner and one of its sub-accounts; `amount` a decimal string. Idempotent by
        transfer_id (always required): retried, a repeat answers duplicate=True."""
        return await self._unary(
            "Transfer", request, pb.TransferResponse, safe=True, timeout=timeout, retry=retry
        )

    def submit_orders(
        self, requests: AsyncIterable[pb.SubmitOrdersRequest], *, timeout: float | None = None
    ) -> AsyncGenerator[pb.SubmitOrdersResponse, None]:
        """The batched order-entry stream: one response per request batch (never retried)."""
        return self._bidi("SubmitOrders", requests, pb.SubmitOrdersResponse, timeout=timeout)

    def stream_user_events(
        self, request: pb.StreamUserEventsRequest, *, timeout: float | None = None
    ) -> AsyncGenerator[pb.StreamUserEventsResponse, None]:
        """One user's events (one stream, no reconnection: see user_events)."""
        return self._stream("StreamUserEvents", request, pb.StreamUserEventsResponse, timeout=timeout)

    def stream_account_events(
        self, request: pb.StreamAccountEventsRequest, *, timeout: float | None = None
    ) -> AsyncGenerator[pb.StreamAccountEventsResponse, None]:
        """Every accounts event (one stream, no reconnection: see account_events)."""
        return self._stream("StreamAccountEvents", request, pb.StreamAccountEventsResponse, timeout=timeout)

    def account_events(self, source: str = "accounts-0") -> StreamSource[ev.AccountEvent]:
        """StreamAccountEvents as an event source for follow_events (contiguous sequences)."""
        return StreamSource(
            source,
            lambda: self.address,
            lambda start: self.stream_account_events(pb.StreamAccountEventsRequest(from_sequence=start)),
            contiguous=True,
        )

    def user_events(self, user_id: int, source: str = "accounts-0") -> StreamSource[ev.AccountEvent]:
        """StreamUserEvents of one user as an event source (increasing sequences of the accounts
        source, not contiguous: the other users' events are not in it)."""
        return StreamSource(
            source,
            lambda: self.address,
            lambda start: self.stream_user_events(
                pb.StreamUserEventsRequest(user_id=user_id, from_sequence=start)
            ),
            contiguous=False,
        )

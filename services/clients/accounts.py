"""AccountsClient: AccountsService (services.accounts), typed and thin.

Retried on UNAVAILABLE (see services.clients.retry): the reads; Deposit and Withdraw when they carry a
business_id (accounts applies one business id once); PlaceOrder when it carries a client_order_id (a
repeat answers the same order, duplicate=True); OpenSubAccount (idempotent by owner and label) and
Transfer (idempotent by transfer_id). Never retried: CancelOrder, CancelAllOrders, AmendOrder,
SubmitOrders (a repeat may answer differently from the first). Cluster mode (services.accounts.replica):
a write a follower refused (NOT_LEADER: it applied nothing) goes to the leader, every call and
SubmitOrders alike (services.clients.base).

account_events() and user_events(user_id) are event sources for services.clients.follow.

Accounts sharded by user. When the resolver knows several accounts shards ("accounts", "accounts-1",
...; services.clients.resolver) a client of "accounts" routes every call by its user (user_id mod the
shard count; a sub-account's id is in its owner's partition): the same methods, each call to the shard
that owns the user, over one connection per shard. SubmitOrders splits each batch by shard and answers
one response per batch with the results in the batch's order. The all-users event stream and the status
are per shard: account_events("accounts-<i>"), stream_account_events(..., shard=i),
get_accounts_status(..., shard=i), and for_shard(i) is the client of one shard. A client of one
shard's name ("accounts-1") calls that shard only.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator
from typing import Any

from exchange.v1 import accounts_service_pb2 as pb
from exchange.v1 import events_pb2 as ev

from services.clients.base import MAX_REDIRECTS, ServiceClient, is_not_leader
from services.clients.channels import Connection
from services.clients.errors import ClientError
from services.clients.follow import StreamSource
from services.clients.resolver import ACCOUNTS, UnknownService, accounts_name
from services.clients.retry import RetryPolicy

Options = RetryPolicy | None

_SHARD_SOURCE = re.compile(r"accounts-(\d+)")
_PIPELINE = 64  # SubmitOrders batches in flight across the shards' streams


def command_user(c: pb.OrderCommand) -> int:
    """The user an OrderCommand acts for (0 for an empty one)."""
    kind = c.WhichOneof("command")
    return int(getattr(c, kind).user_id) if kind else 0


class AccountsClient(ServiceClient):
    SERVICE = "exchange.v1.AccountsService"
    NAME = "accounts"
    DEFAULT_TIMEOUT_S = 5.0

    _shard_count: int = 0  # 0 = not looked up yet
    _siblings: dict[int, AccountsClient] | None = None

    # --- accounts sharded by user ----------------------------------------------------------------

    @property
    def shard_count(self) -> int:
        """How many accounts shards this client routes over (1: a client of one shard)."""
        if not self._shard_count:
            conn = self.connection
            routed = conn.resolver is not None and conn.resolver.canonical(conn.name) == ACCOUNTS
            self._shard_count = conn.resolver.accounts_shards() if routed and conn.resolver else 1
        return self._shard_count

    def shard_of(self, user_id: int) -> int:
        """The index of the accounts shard that owns `user_id`."""
        return user_id % self.shard_count

    def for_shard(self, index: int) -> AccountsClient:
        """The client of accounts shard `index` (this client for 0; created on first use, closed
        with this one)."""
        if index == 0 or self.shard_count == 1:
            return self
        if not 0 < index < self.shard_count:
            raise ValueError(f"no accounts shard {index} ({self.shard_count} shards)")
        if self._siblings is None:
            self._siblings = {}
        c = self._siblings.get(index)
        if c is None:
            conn = self.connection
            sibling = Connection(
                accounts_name(index),
                conn.resolver,
                security=conn.security,
                token=conn.token,
                options=conn.options,
            )
            c = self._siblings[index] = AccountsClient(
                sibling, timeout=self.timeout, retry=self.retry, owns_connection=True, rand=self._rand
            )
            c._shard_count = 1
        return c

    def for_user(self, user_id: int) -> AccountsClient:
        """The client of the accounts shard that owns `user_id`."""
        n = self.shard_count
        return self if n == 1 else self.for_shard(user_id % n)

    def shard_of_source(self, source: str) -> int:
        """The shard index of an accounts source name ("accounts-1" -> 1; anything else 0)."""
        m = _SHARD_SOURCE.fullmatch(source)
        index = int(m.group(1)) if m else 0
        return index if index < self.shard_count else 0

    async def close(self) -> None:
        siblings, self._siblings = self._siblings, None
        for c in (siblings or {}).values():
            await c.close()
        await super().close()

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
        return await self.for_user(request.user_id)._unary(
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
        return await self.for_user(request.user_id)._unary(
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
        return await self.for_user(request.user_id)._unary(
            "GetBalances", request, pb.GetBalancesResponse, safe=True, timeout=timeout, retry=retry
        )

    async def place_order(
        self, request: pb.PlaceOrderRequest, *, timeout: float | None = None, retry: Options = None
    ) -> pb.PlaceOrderResponse:
        """Retried only with a client_order_id (idempotent)."""
        return await self.for_user(request.user_id)._unary(
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
        return await self.for_user(request.user_id)._unary(
            "CancelOrder", request, pb.CancelOrderResponse, safe=False, timeout=timeout, retry=retry
        )

    async def cancel_all_orders(
        self, request: pb.CancelAllOrdersRequest, *, timeout: float | None = None, retry: Options = None
    ) -> pb.CancelAllOrdersResponse:
        return await self.for_user(request.user_id)._unary(
            "CancelAllOrders", request, pb.CancelAllOrdersResponse, safe=False, timeout=timeout, retry=retry
        )

    async def amend_order(
        self, request: pb.AmendOrderRequest, *, timeout: float | None = None, retry: Options = None
    ) -> pb.AmendOrderResponse:
        return await self.for_user(request.user_id)._unary(
            "AmendOrder", request, pb.AmendOrderResponse, safe=False, timeout=timeout, retry=retry
        )

    async def get_order(
        self, request: pb.GetOrderRequest, *, timeout: float | None = None, retry: Options = None
    ) -> pb.GetOrderResponse:
        return await self.for_user(request.user_id)._unary(
            "GetOrder", request, pb.GetOrderResponse, safe=True, timeout=timeout, retry=retry
        )

    async def list_open_orders(
        self, request: pb.ListOpenOrdersRequest, *, timeout: float | None = None, retry: Options = None
    ) -> pb.ListOpenOrdersResponse:
        return await self.for_user(request.user_id)._unary(
            "ListOpenOrders", request, pb.ListOpenOrdersResponse, safe=True, timeout=timeout, retry=retry
        )

    async def get_accounts_status(
        self,
        request: pb.GetAccountsStatusRequest | None = None,
        *,
        timeout: float | None = None,
        retry: Options = None,
        shard: int = 0,
    ) -> pb.GetAccountsStatusResponse:
        """The status of accounts shard `shard` (the first by default)."""
        return await self.for_shard(shard)._unary(
            "GetAccountsStatus",
            request if request is not None else pb.GetAccountsStatusRequest(),
            pb.GetAccountsStatusResponse,
            safe=True,
            timeout=timeout,
            retry=retry,
        )

    async def route_market(
        self,
        request: pb.RouteMarketRequest,
        *,
        timeout: float | None = None,
        retry: Options = None,
        shard: int = 0,
    ) -> pb.RouteMarketResponse:
        """Admin: where accounts shard `shard` sends a market's commands (services.cluster.operator).
        Idempotent: retried, also while it answers UNAVAILABLE, MARKET_MOVING (settlement catching up)."""
        return await self.for_shard(shard)._unary(
            "RouteMarket", request, pb.RouteMarketResponse, safe=True, timeout=timeout, retry=retry
        )

    async def add_market(
        self,
        request: pb.AddMarketRequest,
        *,
        timeout: float | None = None,
        retry: Options = None,
        shard: int = 0,
    ) -> pb.AddMarketResponse:
        """Admin: a market added while running, on accounts shard `shard` (a repeat changes nothing)."""
        return await self.for_shard(shard)._unary(
            "AddMarket", request, pb.AddMarketResponse, safe=True, timeout=timeout, retry=retry
        )

    async def open_sub_account(
        self, request: pb.OpenSubAccountRequest, *, timeout: float | None = None, retry: Options = None
    ) -> pb.OpenSubAccountResponse:
        """Idempotent by (owner, label): retried; a repeat answers the same sub-account (duplicate)."""
        return await self.for_user(request.owner_user_id)._unary(
            "OpenSubAccount", request, pb.OpenSubAccountResponse, safe=True, timeout=timeout, retry=retry
        )

    async def list_sub_accounts(
        self, request: pb.ListSubAccountsRequest, *, timeout: float | None = None, retry: Options = None
    ) -> pb.ListSubAccountsResponse:
        """One page of the owner's sub-accounts (in the order opened); next_page_token for the rest."""
        return await self.for_user(request.owner_user_id)._unary(
            "ListSubAccounts", request, pb.ListSubAccountsResponse, safe=True, timeout=timeout, retry=retry
        )

    async def transfer(
        self, request: pb.TransferRequest, *, timeout: float | None = None, retry: Options = None
    ) -> pb.TransferResponse:
        """Between an owner and one of its sub-accounts; `amount` a decimal string. Idempotent by
        transfer_id (always required): retried, a repeat answers duplicate=True."""
        return await self.for_user(request.from_user_id)._unary(
            "Transfer", request, pb.TransferResponse, safe=True, timeout=timeout, retry=retry
        )

    def submit_orders(
        self, requests: AsyncIterable[pb.SubmitOrdersRequest], *, timeout: float | None = None
    ) -> AsyncGenerator[pb.SubmitOrdersResponse, None]:
        """The batched order-entry stream: one response per request batch (never retried). With
        several accounts shards each batch is split by user over one stream per shard and its
        results come back in the batch's order."""
        if self.shard_count == 1:
            return self._submit_at_leader(requests, timeout)
        return self._submit_sharded(requests, timeout)

    async def _submit_at_leader(
        self, requests: AsyncIterable[pb.SubmitOrdersRequest], timeout: float | None
    ) -> AsyncGenerator[pb.SubmitOrdersResponse, None]:
        """SubmitOrders on one shard's stream, redirected to the shard's leader when a follower refuses
        it (NOT_LEADER, services.accounts.replica). A follower refuses before it answers anything and
        applies nothing of the stream, so the requests that stream was sent are sent again, in order,
        on a stream to the leader (within the client's deadline, see services.clients.base), then the
        rest. Once a stream answered, its errors are raised (a batch is never sent twice)."""
        buffered: deque[pb.SubmitOrdersRequest] = deque()  # read from `requests`, not yet sent
        unanswered: deque[pb.SubmitOrdersRequest] = deque()  # sent on the current stream, not answered
        more, room = asyncio.Event(), asyncio.Event()
        ended: list[BaseException | None] = []  # [None]: `requests` ended; [exc]: it failed
        current = [0]  # the attempt whose stream takes requests (an abandoned one's feed stops)

        async def pump() -> None:
            try:
                async for req in requests:
                    while len(buffered) >= _PIPELINE:
                        room.clear()
                        await room.wait()
                    buffered.append(req)
                    more.set()
                ended.append(None)
            except Exception as exc:
                ended.append(exc)
            more.set()

        async def feed(attempt: int) -> AsyncIterator[pb.SubmitOrdersRequest]:
            for req in list(unanswered):  # what the refused stream was sent, again
                yield req
            while True:
                while not buffered and not ended and current[0] == attempt:
                    more.clear()
                    await more.wait()
                if current[0] != attempt:
                    return
                if buffered:  # taken and recorded at once: no await in between
                    req = buffered.popleft()
                    unanswered.append(req)
                    room.set()
                    yield req
                    continue
                if ended[0] is not None:
                    raise ended[0]
                return

        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        pumping = asyncio.create_task(pump())
        redirects = 0
        try:
            while True:
                answered = False
                try:
                    stream = self._bidi(
                        "SubmitOrders", feed(current[0]), pb.SubmitOrdersResponse, timeout=timeout
                    )
                    try:
                        async for resp in stream:
                            answered = True
                            if unanswered:
                                unanswered.popleft()
                            yield resp
                        return
                    finally:
                        await stream.aclose()
                except ClientError as exc:
                    if answered or not is_not_leader(exc):
                        raise
                    failure = exc
                except UnknownService:
                    if not redirects:
                        raise
                    failure = self.no_leader_error("SubmitOrders", redirects + 1)
                current[0] += 1  # the refused stream's feed takes no more requests
                more.set()
                redirects += 1
                if redirects > MAX_REDIRECTS or not await self.follow_leader(failure):
                    raise failure
                pause = self.redirect_wait(redirects)
                if loop.time() + pause >= deadline:
                    raise failure
                await asyncio.sleep(pause)
        finally:
            pumping.cancel()
            with contextlib.suppress(BaseException):
                await pumping

    async def _submit_sharded(
        self, requests: AsyncIterable[pb.SubmitOrdersRequest], timeout: float | None
    ) -> AsyncGenerator[pb.SubmitOrdersResponse, None]:
        n = self.shard_count
        outgoing: list[asyncio.Queue[pb.SubmitOrdersRequest | None]] = [asyncio.Queue() for _ in range(n)]
        incoming: list[asyncio.Queue[Any]] = [asyncio.Queue() for _ in range(n)]
        # Per batch in order: (batch_id, [(shard, positions)], command count), or the end / an error.
        pending: asyncio.Queue[Any] = asyncio.Queue(maxsize=_PIPELINE)
        readers: dict[int, asyncio.Task[None]] = {}
        end = object()

        async def feed(i: int) -> AsyncIterator[pb.SubmitOrdersRequest]:
            while (r := await outgoing[i].get()) is not None:
                yield r

        async def read(i: int) -> None:
            stream = self.for_shard(i)._submit_at_leader(feed(i), timeout)
            try:
                async for resp in stream:
                    incoming[i].put_nowait(resp)
                incoming[i].put_nowait(end)
            except BaseException as exc:
                incoming[i].put_nowait(exc)
                raise
            finally:
                await stream.aclose()

        def send(i: int, req: pb.SubmitOrdersRequest) -> None:
            if i not in readers:
                readers[i] = asyncio.create_task(read(i))
            outgoing[i].put_nowait(req)

        async def pump() -> None:
            try:
                async for req in requests:
                    parts: dict[int, list[int]] = {}
                    for pos, c in enumerate(req.commands):
                        parts.setdefault(command_user(c) % n, []).append(pos)
                    if len(parts) <= 1:
                        i = next(iter(parts), 0)
                        send(i, req)
                        await pending.put((req.batch_id, [(i, None)], len(req.commands)))
                        continue
                    split = []
                    for i, positions in sorted(parts.items()):
                        sub = pb.SubmitOrdersRequest(batch_id=req.batch_id, full_orders=req.full_orders)
                        sub.commands.extend(req.commands[p] for p in positions)
                        send(i, sub)
                        split.append((i, positions))
                    await pending.put((req.batch_id, split, len(req.commands)))
                await pending.put(end)
            except BaseException as exc:
                await pending.put(exc)
                raise

        async def answer(i: int) -> pb.SubmitOrdersResponse:
            item = await incoming[i].get()
            if item is end:
                raise ConnectionError(f"accounts shard {i} closed SubmitOrders before answering")
            if isinstance(item, BaseException):
                raise item
            resp: pb.SubmitOrdersResponse = item
            return resp

        pumping = asyncio.create_task(pump())
        try:
            while True:
                item = await pending.get()
                if item is end:
                    return
                if isinstance(item, BaseException):
                    raise item
                batch_id, split, count = item
                if split[0][1] is None:
                    yield await answer(split[0][0])
                    continue
                results: list[Any] = [None] * count
                for i, positions in split:
                    resp = await answer(i)
                    for p, r in zip(positions, resp.results, strict=True):
                        results[p] = r
                out = pb.SubmitOrdersResponse(batch_id=batch_id)
                out.results.extend(results)
                yield out
        finally:
            pumping.cancel()
            for q in outgoing:
                q.put_nowait(None)
            for t in readers.values():
                t.cancel()
            for t in (pumping, *readers.values()):
                with contextlib.suppress(BaseException):
                    await t

    def stream_user_events(
        self, request: pb.StreamUserEventsRequest, *, timeout: float | None = None
    ) -> AsyncGenerator[pb.StreamUserEventsResponse, None]:
        """One user's events (one stream, no reconnection: see user_events)."""
        return self.for_user(request.user_id)._stream(
            "StreamUserEvents", request, pb.StreamUserEventsResponse, timeout=timeout
        )

    def stream_account_events(
        self, request: pb.StreamAccountEventsRequest, *, timeout: float | None = None, shard: int = 0
    ) -> AsyncGenerator[pb.StreamAccountEventsResponse, None]:
        """Every accounts event of shard `shard` (one stream, no reconnection: see account_events)."""
        return self.for_shard(shard)._stream(
            "StreamAccountEvents", request, pb.StreamAccountEventsResponse, timeout=timeout
        )

    def account_events(self, source: str = "accounts-0") -> StreamSource[ev.AccountEvent]:
        """StreamAccountEvents as an event source for follow_events (contiguous sequences): of the
        shard named by `source` ("accounts-<i>") when this client routes over several."""
        shard = self.for_shard(self.shard_of_source(source))
        return StreamSource(
            source,
            lambda: shard.address,
            lambda start: shard.stream_account_events(pb.StreamAccountEventsRequest(from_sequence=start)),
            contiguous=True,
        )

    def user_events(self, user_id: int, source: str = "accounts-0") -> StreamSource[ev.AccountEvent]:
        """StreamUserEvents of one user as an event source (increasing sequences of the accounts
        source, not contiguous: the other users' events are not in it). With several accounts shards
        the stream is the owning shard's, and so is its source name."""
        shard = self.for_user(user_id)
        if self.shard_count > 1:
            source = f"accounts-{self.shard_of(user_id)}"
        return StreamSource(
            source,
            lambda: shard.address,
            lambda start: self.stream_user_events(
                pb.StreamUserEventsRequest(user_id=user_id, from_sequence=start)
            ),
            contiguous=False,
        )

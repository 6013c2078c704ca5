"""AccountsService: the gRPC adapter around the accounts state machine."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from exchange.v1 import accounts_service_pb2 as pb
from exchange.v1 import events_pb2 as ev
from exchange.v1 import replica_pb2, types_pb2

from services.accounts.links import Forwarder
from services.accounts.machine import (
    AccountsMachine,
    AddMarketResult,
    AdjustOutcome,
    CancelAllResult,
    OpenOutcome,
    PlaceResult,
    QuarantineReport,
    RouteResult,
    TransferOutcome,
)
from services.accounts.user_events import UserEventHub
from services.accounts.views import (
    account_stream_request,
    adjust_command,
    amend_commands,
    balance_message,
    balances_request,
    cancel_all_command,
    cancel_command,
    check_amend_request,
    check_order_request,
    fill_order_ack,
    market_spec_message,
    open_orders_request,
    open_sub_account_command,
    order_message,
    page_token,
    place_command,
    sub_account_message,
    sub_accounts_request,
    transfer_command,
    user_stream_request,
)
from services.common.config import AccountsConfig
from services.common.errors import ExchangeError, InvalidArgument, NotFound, Reason, Unavailable, quote
from services.common.host import StateMachineHost
from services.common.limits import MAX_SYMBOL, check_ordinary_user, check_str
from services.common.markets import MarketCatalog
from services.common.rpc import (
    bounded_message,
    error_code,
    handles_errors,
    handles_stream_errors,
    to_exchange_error,
)
from services.common.streams import Pipeline
from services.common.wire import repeated_messages

log = logging.getLogger(__name__)

AccountsHost = StateMachineHost[ev.AccountsCommand, AccountsMachine]
MAX_BATCH_COMMANDS = 10_000
MAX_PLACED_HINTS = 100_000  # client_order_id -> market hints one SubmitOrders stream keeps


class AccountsServicer:
    # Links a matching shard added while running (services.accounts.__main__; None: only the configured).
    link_shard: Callable[[str], None] | None = None

    def __init__(
        self,
        host: AccountsHost,
        catalog: MarketCatalog,
        config: AccountsConfig,
        forwarders: dict[str, Forwarder],
    ) -> None:
        self.host = host
        self.catalog = catalog
        self.config = config
        self.forwarders = forwarders
        self.hub = UserEventHub(host)

    @property
    def ledger(self) -> Any:
        return self.host.machine.ledger

    def role(self) -> replica_pb2.ReplicaRole:
        """What this process is to its shard (GetAccountsStatus role): the shard's only process here;
        a replica in cluster mode is its leader or a follower (AccountsReplicaServicer)."""
        return replica_pb2.REPLICA_ROLE_STANDALONE

    def _owned(self, user: int) -> None:
        """Accounts sharded by user: a read of a user of another shard is refused (USER_NOT_ON_SHARD,
        naming the owner); the commands are refused by the ledger itself. User 0, the fee account,
        is every shard's own."""
        if self.config.shards > 1 and user:
            self.ledger.check_owner(user)

    def _check_outbox(self, market: str) -> None:
        if market not in self.catalog.markets:
            return
        shard = self.host.machine.shard_of(market)
        fwd = self.forwarders.get(shard)
        if fwd is not None and fwd.lag >= self.config.max_outbox_lag:
            raise Unavailable(
                f"matching shard {shard} is behind ({fwd.lag} commands); retry later",
                500,
                Reason.SHARD_BEHIND,
            )

    # --- reference data ------------------------------------------------------------------------

    @handles_errors
    async def ListAssets(self, request: pb.ListAssetsRequest, context: Any) -> pb.ListAssetsResponse:
        return pb.ListAssetsResponse(
            assets=[
                types_pb2.Asset(symbol=a.symbol, decimals=a.decimals) for a in self.catalog.assets.values()
            ]
        )

    @handles_errors
    async def ListMarkets(self, request: pb.ListMarketsRequest, context: Any) -> pb.ListMarketsResponse:
        markets = [market_spec_message(m) for m in self.catalog.markets.values()]
        machine = self.host.machine
        if machine.routes:  # markets moved to another shard (services.cluster.operator)
            for m in markets:
                m.shard = machine.shard_of(m.symbol)
        return pb.ListMarketsResponse(markets=markets)

    # --- balances ------------------------------------------------------------------------------

    async def _adjust(self, req: Any, sign: int) -> tuple[Any, bool, int]:
        cmd = adjust_command(
            req.user_id, req.asset, req.amount, req.business, req.business_id, self.catalog, sign
        )
        if not self.ledger.subs.is_sub_account(req.user_id):  # (a sub-account: the machine refuses it)
            check_ordinary_user(req.user_id)  # no ordinary account from 2^62: those are sub-accounts
        out: AdjustOutcome = await self.host.submit(cmd)
        bal = balance_message(self.catalog, req.asset, out.result.available, out.result.frozen)
        return bal, out.result.duplicate, out.seq

    @handles_errors
    async def Deposit(self, request: pb.DepositRequest, context: Any) -> pb.DepositResponse:
        bal, dup, seq = await self._adjust(request, 1)
        return pb.DepositResponse(balance=bal, duplicate=dup, sequence=seq)

    @handles_errors
    async def Withdraw(self, request: pb.WithdrawRequest, context: Any) -> pb.WithdrawResponse:
        bal, dup, seq = await self._adjust(request, -1)
        return pb.WithdrawResponse(balance=bal, duplicate=dup, sequence=seq)

    @handles_errors
    async def GetBalances(self, request: pb.GetBalancesRequest, context: Any) -> pb.GetBalancesResponse:
        user, assets = balances_request(request, self.catalog)
        self._owned(user)
        return pb.GetBalancesResponse(
            balances=[balance_message(self.catalog, a, *self.ledger.peek_balance(user, a)) for a in assets]
        )

    # --- sub-accounts --------------------------------------------------------------------------

    @handles_errors
    async def OpenSubAccount(
        self, request: pb.OpenSubAccountRequest, context: Any
    ) -> pb.OpenSubAccountResponse:
        out: OpenOutcome = await self.host.submit(open_sub_account_command(request))
        return pb.OpenSubAccountResponse(
            sub_account=sub_account_message(out.result.sub_account),
            duplicate=out.result.duplicate,
            sequence=out.seq,
        )

    @handles_errors
    async def ListSubAccounts(
        self, request: pb.ListSubAccountsRequest, context: Any
    ) -> pb.ListSubAccountsResponse:
        owner, size, after = sub_accounts_request(request)
        self._owned(owner)
        subs = self.ledger.subs.of_owner(owner, after)
        page = [s for _, s in zip(range(size + 1), subs, strict=False)]
        token = page_token(page[size - 1].user_id) if len(page) > size else ""
        return pb.ListSubAccountsResponse(
            sub_accounts=[sub_account_message(s) for s in page[:size]], next_page_token=token
        )

    @handles_errors
    async def Transfer(self, request: pb.TransferRequest, context: Any) -> pb.TransferResponse:
        out: TransferOutcome = await self.host.submit(transfer_command(request, self.catalog))
        r = out.result.record
        return pb.TransferResponse(
            from_balance=balance_message(self.catalog, r.asset, *r.from_balance),
            to_balance=balance_message(self.catalog, r.asset, *r.to_balance),
            duplicate=out.result.duplicate,
            sequence=r.sequence,
        )

    # --- moving a market (services.cluster.operator) ---------------------------------------------

    @handles_errors
    async def RouteMarket(self, request: pb.RouteMarketRequest, context: Any) -> pb.RouteMarketResponse:
        for name in ("market", "shard", "from_shard"):
            check_str(getattr(request, name), name, MAX_SYMBOL)
        if request.market not in self.catalog.markets:
            raise NotFound(f"unknown market {quote(request.market)}", Reason.UNKNOWN_MARKET)
        if request.shard and not request.halted and self.link_shard is not None:
            self.link_shard(request.shard)  # a shard added while running: link it before routing there
        cmd = ev.AccountsCommand()
        r = cmd.route_market
        r.market, r.shard, r.halted = request.market, request.shard, request.halted
        r.from_shard, r.after_sequence = request.from_shard, request.after_sequence
        out: RouteResult = await self.host.submit(cmd)
        if out.seq:
            log.info(
                "market route",
                extra={"market": out.market, "shard": out.shard, "halted": out.halted, "sequence": out.seq},
            )
        return pb.RouteMarketResponse(market=out.market, shard=out.shard, halted=out.halted, sequence=out.seq)

    @handles_errors
    async def AddMarket(self, request: pb.AddMarketRequest, context: Any) -> pb.AddMarketResponse:
        check_str(request.spec.symbol, "symbol", MAX_SYMBOL)
        check_str(request.spec.shard, "shard", MAX_SYMBOL)
        if request.spec.shard and self.link_shard is not None:
            self.link_shard(request.spec.shard)  # its shard may be new too
        cmd = ev.AccountsCommand()
        cmd.add_market.spec.CopyFrom(request.spec)
        out: AddMarketResult = await self.host.submit(cmd)
        if out.seq:
            log.info(
                "market added",
                extra={"market": out.spec.symbol, "shard": out.spec.shard, "sequence": out.seq},
            )
        return pb.AddMarketResponse(spec=market_spec_message(out.spec), sequence=out.seq)

    # --- orders --------------------------------------------------------------------------------

    @handles_errors
    async def PlaceOrder(self, request: pb.PlaceOrderRequest, context: Any) -> pb.PlaceOrderResponse:
        cmd = place_command(request, self.catalog)
        self._check_outbox(request.market)
        res: PlaceResult = await self.host.submit(cmd)
        return pb.PlaceOrderResponse(order=order_message(res.order, self.catalog), duplicate=res.duplicate)

    @handles_errors
    async def CancelOrder(self, request: pb.CancelOrderRequest, context: Any) -> pb.CancelOrderResponse:
        order = await self.host.submit(cancel_command(request))
        return pb.CancelOrderResponse(order=order_message(order, self.catalog))

    @handles_errors
    async def CancelAllOrders(
        self, request: pb.CancelAllOrdersRequest, context: Any
    ) -> pb.CancelAllOrdersResponse:
        res: CancelAllResult = await self.host.submit(cancel_all_command(request, self.catalog))
        return pb.CancelAllOrdersResponse(order_count=res.order_count)

    def _amend_commands(
        self, request: pb.AmendOrderRequest, placed: dict[tuple[int, str], str] | None = None
    ) -> list[ev.AccountsCommand]:
        """The amend command(s) (see views.amend_commands). The order is looked up only for the market
        whose scales parse the decimals; the machine finds and checks the order when it applies the
        command, so an amend sees every command before it, like a cancel. Without request.market the
        market is the order's, or (for an order not applied yet) that of the order placed earlier in
        the same SubmitOrders stream with this client_order_id (`placed`)."""
        check_amend_request(request)
        market = request.market
        if not market:
            try:
                market = self.ledger.lookup(request.user_id, request.order_id, request.client_order_id).market
            except NotFound:
                hint = placed.get((request.user_id, request.client_order_id)) if placed else None
                if not request.client_order_id or hint is None:
                    raise
                market = hint
        return amend_commands(request, self.catalog, market)

    async def _amend(self, request: pb.AmendOrderRequest) -> Any:
        results = await self.host.submit_batch(self._amend_commands(request))
        for r in results:
            if isinstance(r, BaseException):
                raise r
        return results[-1]

    @handles_errors
    async def AmendOrder(self, request: pb.AmendOrderRequest, context: Any) -> pb.AmendOrderResponse:
        order = await self._amend(request)
        return pb.AmendOrderResponse(order=order_message(order, self.catalog))

    @handles_errors
    async def GetOrder(self, request: pb.GetOrderRequest, context: Any) -> pb.GetOrderResponse:
        check_order_request(request)
        order = self.ledger.lookup(request.user_id, request.order_id, request.client_order_id)
        return pb.GetOrderResponse(order=order_message(order, self.catalog))

    @handles_errors
    async def ListOpenOrders(
        self, request: pb.ListOpenOrdersRequest, context: Any
    ) -> pb.ListOpenOrdersResponse:
        user, market, page_size, after = open_orders_request(request, self.catalog)
        self._owned(user)
        orders = sorted(
            (o for o in self.ledger.iter_user_orders(user, market) if o.order_id > after),
            key=lambda o: o.order_id,
        )
        page = orders[:page_size]
        token = page_token(page[-1].order_id) if len(orders) > page_size else ""
        return pb.ListOpenOrdersResponse(
            orders=[order_message(o, self.catalog) for o in page], next_page_token=token
        )

    # --- batched streaming entry ---------------------------------------------------------------

    def _batch_command(
        self, c: pb.OrderCommand, placed: dict[tuple[int, str], str]
    ) -> list[ev.AccountsCommand]:
        kind = c.WhichOneof("command")
        if kind == "place_order":
            p = c.place_order
            market = p.market
            self._check_outbox(market)
            cmd = place_command(p, self.catalog)
            client_order_id = p.client_order_id
            if client_order_id:
                if len(placed) >= MAX_PLACED_HINTS:
                    placed.clear()
                placed[(p.user_id, client_order_id)] = market
            return [cmd]
        if kind == "cancel_order":
            return [cancel_command(c.cancel_order)]
        if kind == "cancel_all_orders":
            return [cancel_all_command(c.cancel_all_orders, self.catalog)]
        if kind == "amend_order":
            return self._amend_commands(c.amend_order, placed)
        raise InvalidArgument("empty command", Reason.INVALID_FIELD)

    def _fill_result(self, r: pb.OrderCommandResult, value: Any, full: bool) -> None:
        """One batched command's result, written into `r` (an entry of the response's results:
        filled in place, which costs about half of building a message and copying it in)."""
        if isinstance(value, BaseException):
            err = to_exchange_error(value)
            if err is None:
                r.code, r.message, r.reason = 13, "internal error", Reason.INTERNAL
            else:
                r.code, r.message, r.reason = error_code(err), bounded_message(err.message), err.reason
            return
        if isinstance(value, CancelAllResult):
            r.order_count = value.order_count
            return
        if isinstance(value, PlaceResult):
            if value.duplicate:
                r.duplicate = True
            value = value.order
        if full:
            r.order.CopyFrom(order_message(value, self.catalog))
        else:
            fill_order_ack(r.order, value)

    @handles_stream_errors
    async def SubmitOrders(
        self,
        request_iterator: AsyncIterator[pb.SubmitOrdersRequest],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[pb.SubmitOrdersResponse]:
        # Each request becomes one host batch; its answer goes out when the batch is durable. The
        # reader goes on with the next requests meanwhile (bounded), so batches pipeline.
        Slot = tuple[int, int, ExchangeError | None]  # (first index, count, parse error)
        Item = tuple[int, bool, list[Slot], asyncio.Future[list[Any]]]
        # Markets of the orders this stream placed with a client_order_id: an amend of one that is not
        # applied yet (same or previous batch) is parsed at that market's scales.
        placed: dict[tuple[int, str], str] = {}

        async def read(batches: Pipeline[Item]) -> None:
            async for req in request_iterator:
                if len(req.commands) > MAX_BATCH_COMMANDS:
                    raise InvalidArgument(
                        f"a batch holds at most {MAX_BATCH_COMMANDS} commands ({len(req.commands)} sent)",
                        Reason.BATCH_TOO_LARGE,
                    )
                slots: list[Slot] = []
                to_submit: list[ev.AccountsCommand] = []
                for c in req.commands:
                    try:
                        cmds = self._batch_command(c, placed)
                    except Exception as exc:
                        err = to_exchange_error(exc)
                        if err is None:
                            raise
                        slots.append((0, 0, err))
                        continue
                    slots.append((len(to_submit), len(cmds), None))
                    to_submit.extend(cmds)
                await self.host.wait_for_room(len(to_submit))
                await batches.put((req.batch_id, req.full_orders, slots, self.host.submit_batch(to_submit)))

        async for batch_id, full, slots, fut in Pipeline(read, maxsize=16):
            values = await fut
            response = pb.SubmitOrdersResponse(batch_id=batch_id)
            add = response.results.add
            for first, count, err in slots:
                if err is not None:
                    self._fill_result(add(), err, full)
                    continue
                outs = values[first : first + count]
                failed = next((o for o in outs if isinstance(o, BaseException)), None)
                self._fill_result(add(), failed if failed is not None else outs[-1], full)
            yield response

    # --- event streams -------------------------------------------------------------------------

    @handles_stream_errors
    async def StreamAccountEvents(
        self, request: pb.StreamAccountEventsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[bytes]:
        from_seq = account_stream_request(request)
        async for records in self.host.follow_events(from_seq or 1, max_records=2000):
            yield repeated_messages(1, [p for _, p in records])

    @handles_stream_errors
    async def StreamUserEvents(
        self, request: pb.StreamUserEventsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[bytes]:
        user, from_seq = user_stream_request(request)
        self._owned(user)
        async for records in self.hub.follow(user, from_seq):
            yield repeated_messages(1, records)

    # --- status --------------------------------------------------------------------------------

    @handles_errors
    async def GetAccountsStatus(
        self, request: pb.GetAccountsStatusRequest, context: Any
    ) -> pb.GetAccountsStatusResponse:
        machine = self.host.machine
        resp = pb.GetAccountsStatusResponse(
            source=self.config.source,
            applied_sequence=machine.applied_seq,
            event_sequence=machine.event_seq,
            state_hash=machine.state_hash() if request.with_state_hash else "",
            settled_sequences=dict(self.ledger.settled),
            forwarded_sequences={name: f.acked for name, f in self.forwarders.items()},
            snapshot_sequence=self.host.snapshot_seq,
            outbox_pending={name: f.lag for name, f in self.forwarders.items()},
            queue_depth=self.host.queue_depth,
            last_order_id=max(0, self.ledger.next_order_id - self.ledger.shards),
            quarantined_events=self.ledger.quarantined_total,
            market_routes=dict(machine.routes),
            halted_markets=sorted(machine.halted),
            role=self.role(),
        )
        if request.with_audit:
            for asset, a in sorted(self.ledger.audit().items()):
                fmt = self.catalog.assets[asset].format
                resp.audit.add(
                    asset=asset,
                    total=fmt(a["total"]),
                    external=fmt(a["external"]),
                    frozen=fmt(a["frozen"]),
                    held=fmt(a["held"]),
                    cross_shard=fmt(a["cross_shard"]),
                )
        return resp


def outbox_hook(forwarders: dict[str, Forwarder]) -> Callable[[list[Any]], None]:
    """Hands each durable batch's matching commands to the forwarder of their shard, and logs each
    matching event the batch quarantined (once, at ERROR: it needs a person)."""

    def hook(effects: list[Any]) -> None:
        for effect in effects:
            if isinstance(effect, QuarantineReport):
                log.error(
                    "matching event quarantined: not settled",
                    extra={
                        "shard": effect.shard,
                        "event_sequence": effect.sequence,
                        "event": effect.kind,
                        "why": effect.why,
                    },
                )
                continue
            seq, shard, cmd = effect
            fwd = forwarders.get(shard)
            if fwd is not None:
                fwd.push(seq, cmd)

    return hook

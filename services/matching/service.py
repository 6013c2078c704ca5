"""MatchingService: the gRPC adapter of one matching shard."""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
from exchange.v1 import events_pb2 as ev
from exchange.v1 import matching_service_pb2 as pb
from exchange.v1 import types_pb2

from services.common import limits
from services.common.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Reason,
    quote,
)
from services.common.host import StateMachineHost
from services.common.limits import (
    MAX_DECIMAL,
    MAX_DEPTH_LEVELS,
    MAX_PAGE_TOKEN,
    MAX_SYMBOL,
    check_str,
    check_user,
)
from services.common.markets import MarketCatalog, MarketSpec
from services.common.rpc import abort, caller, handles_errors, to_exchange_error
from services.common.wire import repeated_messages
from services.matching.machine import MatchingMachine
from services.matching.model import BUY, SELL

log = logging.getLogger(__name__)

MatchingHost = StateMachineHost[ev.MatchingCommand, MatchingMachine]


def same_command(last: bytes, nxt: bytes) -> bool:
    a = ev.MatchingEvent.FromString(last)
    b = ev.MatchingEvent.FromString(nxt)
    return a.command_source == b.command_source and a.command_sequence == b.command_sequence


def depth_levels(spec: MarketSpec, levels: list[tuple[int, int, int]]) -> list[types_pb2.DepthLevel]:
    return [
        types_pb2.DepthLevel(
            price=spec.format_price(p),
            amount=spec.format_amount(lots),
            price_ticks=p,
            amount_lots=lots,
            order_count=n,
        )
        for p, lots, n in levels
    ]


def parse_merge(spec: MarketSpec, merge: str) -> int:
    if not merge:
        return 1
    return spec.parse_price(merge, field="merge")


class MatchingServicer:
    def __init__(self, host: MatchingHost, catalog: MarketCatalog, shard: str) -> None:
        self.host = host
        self.catalog = catalog
        self.shard = shard
        self.timer_source = f"{shard}:timer"
        self._timer_seq = 0
        self._accepted: dict[str, int] = {}  # highest source sequence queued per source

    @property
    def engine(self) -> Any:
        return self.host.machine.engine

    def _spec(self, market: str) -> MarketSpec:
        check_str(market, "market", MAX_SYMBOL)
        book = self.engine.books.get(market)
        if book is None:
            if market in self.catalog.markets:
                raise NotFound(
                    f"market {market} is not owned by shard {self.shard}", Reason.MARKET_NOT_ON_SHARD
                )
            raise NotFound(f"unknown market {quote(market)}", Reason.UNKNOWN_MARKET)
        spec: MarketSpec = book.spec
        return spec

    # --- command intake ------------------------------------------------------------------------

    async def SubmitCommands(
        self,
        request_iterator: AsyncIterator[pb.SubmitCommandsRequest],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[pb.SubmitCommandsResponse]:
        it = request_iterator.__aiter__()
        try:
            first = await it.__anext__()
        except StopAsyncIteration:
            return
        source = first.source
        if not source or source.startswith(self.shard):
            await abort(context, InvalidArgument("the first request must name the source"))
            return
        principal = caller(context)
        if principal is None or principal.name != source:
            # Only accounts shard N submits as source N: anybody else could skip its sequence numbers
            # or inject commands for orders accounts never placed.
            who = principal.name if principal is not None else "nobody"
            await abort(
                context,
                PermissionDenied(
                    f"{who} may not submit commands as {quote(source)}", Reason.SOURCE_NOT_ALLOWED
                ),
            )
            return
        applied = self.engine.source_seqs.get(source, 0)
        start = max(applied, self._accepted.get(source, 0))
        log.info("source connected", extra={"source": source, "resume_after": start, "peer": context.peer()})
        yield pb.SubmitCommandsResponse(acknowledged_sequence=start)
        pending: asyncio.Queue[tuple[int, asyncio.Future[list[Any]]] | None] = asyncio.Queue(maxsize=32)
        last = [start]

        async def take(req: pb.SubmitCommandsRequest) -> None:
            if req.source and req.source != source:
                raise InvalidArgument(f"stream of {source} got commands of {req.source}")
            cmds = []
            for c in req.commands:
                if c.source_sequence <= last[0]:
                    continue  # a resend of something already queued or applied
                if c.previous_sequence != last[0]:
                    # A gap (or a command out of order): refused, never skipped; nothing of this
                    # request is queued, and the source resends from the acknowledged sequence.
                    raise FailedPrecondition(
                        f"{source}: command {c.source_sequence} follows {c.previous_sequence}, but the last "
                        f"command received from {source} is {last[0]}",
                        Reason.SEQUENCE_GAP,
                    )
                c.source = source
                last[0] = c.source_sequence
                cmds.append(c)
            if not cmds:
                return
            self._accepted[source] = max(self._accepted.get(source, 0), last[0])
            await self.host.wait_for_room(len(cmds))
            await pending.put((last[0], self.host.submit_batch(cmds)))

        async def reader() -> None:
            try:
                await take(first)
                async for req in it:
                    await take(req)
            finally:
                await pending.put(None)

        task = asyncio.create_task(reader())
        try:
            while True:
                item = await pending.get()
                if item is None:
                    break
                seq, fut = item
                await fut
                while not pending.empty():  # coalesce acks
                    nxt = pending.get_nowait()
                    if nxt is None:
                        await pending.put(None)
                        break
                    seq, fut = nxt
                    await fut
                yield pb.SubmitCommandsResponse(acknowledged_sequence=seq)
            if task.done() and task.exception() is not None:
                exc = task.exception()
                assert exc is not None
                err = to_exchange_error(exc)
                if err is None:
                    raise exc
                await abort(context, err)
        finally:
            task.cancel()

    # --- events --------------------------------------------------------------------------------

    async def StreamEvents(
        self, request: pb.StreamEventsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[bytes]:
        max_batch = min(request.max_batch or 2000, 20_000)
        try:
            async for records in self.host.follow_events(
                request.from_sequence or 1, max_records=max_batch, same_group=same_command
            ):
                yield repeated_messages(1, [payload for _, payload in records])
        except Exception as exc:
            err = to_exchange_error(exc)
            if err is None:
                raise
            await abort(context, err)

    # --- queries -------------------------------------------------------------------------------

    @handles_errors
    async def GetDepth(self, request: pb.GetDepthRequest, context: Any) -> pb.GetDepthResponse:
        spec = self._spec(request.market)
        check_str(request.merge, "merge", MAX_DECIMAL)
        merge = parse_merge(spec, request.merge)
        limit = request.limit or 20
        if limit > MAX_DEPTH_LEVELS:
            raise InvalidArgument(f"limit must be at most {MAX_DEPTH_LEVELS}", Reason.VALUE_OUT_OF_RANGE)
        bids, asks = self.engine.books[request.market].depth(limit, merge)
        return pb.GetDepthResponse(
            market=request.market,
            bids=depth_levels(spec, bids),
            asks=depth_levels(spec, asks),
            sequence=self.host.machine.event_seq,
        )

    @handles_errors
    async def ListBookOrders(
        self, request: pb.ListBookOrdersRequest, context: Any
    ) -> pb.ListBookOrdersResponse:
        self._spec(request.market)
        if request.side not in (BUY, SELL):
            raise InvalidArgument("side must be SIDE_BUY or SIDE_SELL")
        if request.user_id:
            check_user(request.user_id)
        page_size = limits.page_size(request.page_size)
        check_str(request.page_token, "page_token", MAX_PAGE_TOKEN)
        offset = 0
        if request.page_token:
            try:
                offset = int(
                    base64.urlsafe_b64decode(request.page_token.encode()).decode().removeprefix("o:")
                )
            except (ValueError, UnicodeDecodeError):
                raise InvalidArgument("malformed page_token", Reason.INVALID_PAGE_TOKEN) from None
        book = self.engine.books[request.market]
        out: list[pb.BookOrder] = []
        index = 0
        more = False
        for order in book.iter_orders(request.side):
            if request.user_id and order.user_id != request.user_id:
                continue
            if index >= offset:
                if len(out) == page_size:
                    more = True
                    break
                out.append(
                    pb.BookOrder(
                        order_id=order.order_id,
                        user_id=order.user_id,
                        side=order.side,
                        price_ticks=order.price,
                        remaining_lots=order.remaining,
                        amount_lots=order.amount,
                        created_time_us=order.created,
                        expire_time_us=order.cmd.expire_at,
                    )
                )
            index += 1
        token = base64.urlsafe_b64encode(f"o:{offset + len(out)}".encode()).decode() if more else ""
        return pb.ListBookOrdersResponse(orders=out, next_page_token=token)

    @handles_errors
    async def GetMatchingStatus(
        self, request: pb.GetMatchingStatusRequest, context: Any
    ) -> pb.GetMatchingStatusResponse:
        engine = self.engine
        markets = []
        for symbol in sorted(engine.books):
            book = engine.books[symbol]
            markets.append(
                pb.MarketStatus(
                    market=symbol,
                    bid_levels=len(book.bids.levels),
                    ask_levels=len(book.asks.levels),
                    order_count=len(book),
                    state_hash=book.state_hash() if request.with_state_hash else "",
                    last_trade_id=book.next_trade_id - 1,
                )
            )
        return pb.GetMatchingStatusResponse(
            shard=self.shard,
            applied_sequence=self.host.machine.applied_seq,
            event_sequence=self.host.machine.event_seq,
            state_hash=engine.state_hash() if request.with_state_hash else "",
            source_sequences=dict(engine.source_seqs),
            markets=markets,
            snapshot_sequence=self.host.snapshot_seq,
        )

    # --- timers --------------------------------------------------------------------------------

    async def expiry_timer(self, interval_s: float) -> None:
        """Journal an expiry command whenever a GTD order is due (the engine never reads a clock)."""
        while True:
            await asyncio.sleep(interval_s)
            now = time.time_ns() // 1000
            due = any(b.expiries and b.expiries[0][0] <= now for b in self.engine.books.values())
            if not due:
                continue
            self._timer_seq = max(self._timer_seq, self.engine.source_seqs.get(self.timer_source, 0)) + 1
            cmd = ev.MatchingCommand(source=self.timer_source, source_sequence=self._timer_seq)
            cmd.expire_orders.SetInParent()
            self.host.enqueue_internal(cmd)

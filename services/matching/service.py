"""MatchingService: the gRPC adapter of one matching shard."""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc
from exchange.v1 import events_pb2 as ev
from exchange.v1 import matching_service_pb2 as pb
from exchange.v1 import replica_pb2

from services.common import limits
from services.common.depth import depth_levels, parse_merge
from services.common.enums import BUY, SELL
from services.common.errors import (
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Reason,
    quote,
)
from services.common.host import StateMachineHost
from services.common.limits import (
    MAX_DEPTH_LEVELS,
    MAX_PAGE_TOKEN,
    MAX_SYMBOL,
    check_str,
    check_user,
)
from services.common.markets import MarketCatalog, MarketSpec
from services.common.rpc import caller, handles_errors, handles_stream_errors
from services.common.streams import Pipeline
from services.common.wire import repeated_messages
from services.matching.handover import PART_ORDERS
from services.matching.intake import CommandIntake
from services.matching.machine import Imported, MatchingMachine, admin_source

log = logging.getLogger(__name__)

# Acknowledgements of a source's commands are coalesced: nothing waits for one (the source keeps
# what is not acknowledged and resends it after a reconnect; the shard drops resends), so a
# durable batch is acknowledged at once only when ACK_EVERY commands or ACK_LINGER_S went by since
# the last acknowledgement, else when no further batch came within what is left of ACK_LINGER_S.
# At a few hundred batches a second this halves the stream messages per order on both sides.
ACK_LINGER_S = 0.02
ACK_EVERY = 2000

MatchingHost = StateMachineHost[ev.MatchingCommand, MatchingMachine]


def same_command(last: bytes, nxt: bytes) -> bool:
    a = ev.MatchingEvent.FromString(last)
    b = ev.MatchingEvent.FromString(nxt)
    return a.command_source == b.command_source and a.command_sequence == b.command_sequence


class MatchingServicer:
    def __init__(self, host: MatchingHost, catalog: MarketCatalog, shard: str) -> None:
        self.host = host
        self.catalog = catalog
        self.shard = shard
        self.intake = CommandIntake(host)
        self._admin = asyncio.Lock()  # the admin source numbers its commands one at a time

    @property
    def engine(self) -> Any:
        return self.host.machine.engine

    def role(self) -> replica_pb2.ReplicaRole:
        """What this process is to its shard (GetMatchingStatus role): the only process here; a
        replica in cluster mode is its leader or a follower (ReplicaServicer)."""
        return replica_pb2.REPLICA_ROLE_STANDALONE

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

    @handles_stream_errors
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
            raise InvalidArgument("the first request must name the source")
        principal = caller(context)
        if principal is None or principal.name != source:
            # Only accounts shard N submits as source N: anybody else could skip its sequence numbers
            # or inject commands for orders accounts never placed.
            who = principal.name if principal is not None else "nobody"
            raise PermissionDenied(
                f"{who} may not submit commands as {quote(source)}", Reason.SOURCE_NOT_ALLOWED
            )
        stream = self.intake.open(source)
        log.info(
            "source connected", extra={"source": source, "resume_after": stream.start, "peer": context.peer()}
        )
        yield pb.SubmitCommandsResponse(acknowledged_sequence=stream.start)

        async def take(
            req: pb.SubmitCommandsRequest, batches: Pipeline[tuple[int, asyncio.Future[list[Any]]]]
        ) -> None:
            if req.source and req.source != source:
                raise InvalidArgument(f"stream of {source} got commands of {req.source}")
            cmds = stream.accept(req.commands)
            if cmds:
                await self.host.wait_for_room(len(cmds))
                await batches.put((stream.last, self.host.submit_batch(cmds)))

        async def read(batches: Pipeline[tuple[int, asyncio.Future[list[Any]]]]) -> None:
            await take(first, batches)
            async for req in it:
                await take(req, batches)

        batches = Pipeline(read, maxsize=32)
        loop = asyncio.get_running_loop()
        items = batches.__aiter__()
        acked = stream.start
        acked_at = loop.time()
        pending = 0  # durable, not yet acknowledged
        nxt: asyncio.Future[tuple[int, asyncio.Future[list[Any]]]] | None = None
        try:
            while True:
                if not pending:
                    try:
                        seq, fut = await items.__anext__()
                    except StopAsyncIteration:
                        break
                else:  # wait for the next batch at most until the acknowledgement is due
                    nxt = asyncio.ensure_future(items.__anext__())
                    due = max(0.0, acked_at + ACK_LINGER_S - loop.time())
                    done, _ = await asyncio.wait({nxt}, timeout=due)
                    if not done:
                        yield pb.SubmitCommandsResponse(acknowledged_sequence=pending)
                        acked, acked_at, pending = pending, loop.time(), 0
                    try:
                        seq, fut = await nxt
                    except StopAsyncIteration:
                        break
                    except Exception:  # the reader's error: acknowledge what is durable first
                        yield pb.SubmitCommandsResponse(acknowledged_sequence=pending)
                        pending = 0
                        raise
                    finally:
                        nxt = None
                await fut
                pending = seq
                if not batches.has_next() and (
                    seq - acked >= ACK_EVERY or loop.time() - acked_at >= ACK_LINGER_S
                ):
                    yield pb.SubmitCommandsResponse(acknowledged_sequence=seq)
                    acked, acked_at, pending = seq, loop.time(), 0
            if pending:
                yield pb.SubmitCommandsResponse(acknowledged_sequence=pending)
        finally:
            if nxt is not None:
                nxt.cancel()
                await asyncio.gather(nxt, return_exceptions=True)
            aclose = getattr(items, "aclose", None)
            if aclose is not None:
                await aclose()

    # --- moving a market (services.matching.handover) ------------------------------------------

    async def _submit_admin(self, cmd: ev.MatchingCommand) -> Any:
        """Journal an operator command under the shard's admin source; its result."""
        source = admin_source(self.shard)
        async with self._admin:
            cmd.source = source
            cmd.source_sequence = self.host.machine.engine.source_seqs.get(source, 0) + 1
            return await self.host.submit(cmd)

    @handles_errors
    async def ExportMarket(self, request: pb.ExportMarketRequest, context: Any) -> pb.ExportMarketResponse:
        check_str(request.market, "market", MAX_SYMBOL)
        check_str(request.to_shard, "to_shard", MAX_SYMBOL)
        if len(request.sources) > 1024:
            raise InvalidArgument("at most 1024 sources", Reason.VALUE_OUT_OF_RANGE)
        for source in request.sources:
            check_str(source, "sources", MAX_SYMBOL)
        cmd = ev.MatchingCommand()
        cmd.export_market.market = request.market
        cmd.export_market.to_shard = request.to_shard
        cmd.export_market.sources.extend(request.sources)
        book: ev.MarketBook = await self._submit_admin(cmd)
        log.info(
            "market exported",
            extra={
                "market": book.market,
                "to_shard": book.to_shard,
                "export_sequence": book.export_sequence,
                "orders": len(book.bids) + len(book.asks),
            },
        )
        return pb.ExportMarketResponse(book=book)

    @handles_errors
    async def ImportMarket(self, request: pb.ImportMarketRequest, context: Any) -> pb.ImportMarketResponse:
        check_str(request.book.market, "market", MAX_SYMBOL)
        if len(request.book.bids) + len(request.book.asks) > PART_ORDERS:
            raise InvalidArgument(
                f"at most {PART_ORDERS} orders per part: send a larger book in parts", Reason.BATCH_TOO_LARGE
            )
        if request.parts > 1_000_000 or request.part >= max(1, request.parts):
            raise InvalidArgument("part must be below parts (at most 1,000,000)", Reason.VALUE_OUT_OF_RANGE)
        cmd = ev.MatchingCommand()
        cmd.import_market.book.CopyFrom(request.book)
        cmd.import_market.part, cmd.import_market.parts = request.part, request.parts
        done: Imported = await self._submit_admin(cmd)
        log.info(
            "market imported" if done.complete else "market import part",
            extra={
                "market": done.market,
                "from_shard": request.book.from_shard,
                "orders": done.order_count,
            },
        )
        return pb.ImportMarketResponse(
            market=done.market,
            order_count=done.order_count,
            event_sequence=done.event_sequence,
            complete=done.complete,
        )

    @handles_errors
    async def OpenMarket(self, request: pb.OpenMarketRequest, context: Any) -> pb.OpenMarketResponse:
        check_str(request.spec.symbol, "symbol", MAX_SYMBOL)
        cmd = ev.MatchingCommand()
        cmd.open_market.spec.CopyFrom(request.spec)
        seq: int = await self._submit_admin(cmd)
        if seq:
            log.info("market opened", extra={"market": request.spec.symbol, "sequence": seq})
        return pb.OpenMarketResponse(market=request.spec.symbol, sequence=seq)

    # --- events --------------------------------------------------------------------------------

    @handles_stream_errors
    async def StreamEvents(
        self, request: pb.StreamEventsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[bytes]:
        max_batch = min(request.max_batch or 2000, 20_000)
        async for records in self.host.follow_events(
            request.from_sequence or 1, max_records=max_batch, same_group=same_command
        ):
            yield repeated_messages(1, [payload for _, payload in records])

    # --- queries -------------------------------------------------------------------------------

    @handles_errors
    async def GetDepth(self, request: pb.GetDepthRequest, context: Any) -> pb.GetDepthResponse:
        spec = self._spec(request.market)
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
        machine = self.host.machine
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
                    halted_by=sorted(machine.halted.get(symbol, ())),
                )
            )
        return pb.GetMatchingStatusResponse(
            shard=self.shard,
            applied_sequence=self.host.machine.applied_seq,
            event_sequence=self.host.machine.event_seq,
            state_hash=machine.state_hash() if request.with_state_hash else "",
            source_sequences=dict(engine.source_seqs),
            markets=markets,
            snapshot_sequence=self.host.snapshot_seq,
            moved_out={m: ev.MarketBook.FromString(b).to_shard for m, b in machine.moved_out.items()},
            role=self.role(),
        )

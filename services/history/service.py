"""HistoryService: the gRPC adapter over HistoryQueries. Queries run in worker threads (the database
calls block); integers become decimal strings here, with the market's and asset's scales.

Every request field is checked by HistoryQueries against services.common.limits before any database
work; a database that cannot be reached answers UNAVAILABLE (reason STORE_FAILED) with a retry delay.
GetHistoryStatus also lists the sources whose next event cannot be stored (failed_sequences,
failure_reasons)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from exchange.v1 import history_service_pb2 as pb
from exchange.v1 import history_service_pb2_grpc as pbg
from exchange.v1 import types_pb2
from sqlalchemy import exc as sa_exc
from sqlalchemy.exc import DBAPIError

from services.common.consumers import SourceFailure
from services.common.enums import BUSINESS_NAMES, BUY
from services.common.errors import Reason, Unavailable
from services.common.markets import MarketCatalog, MarketSpec
from services.common.orders import order_message
from services.common.rpc import handles_errors
from services.history.consumer import describe
from services.history.queries import (
    BalanceRecord,
    HistoryQueries,
    OrderRecord,
    UserTradeRecord,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["HistoryService"].full_name


class HistoryServicer(pbg.HistoryServiceServicer):
    def __init__(
        self,
        queries: HistoryQueries,
        catalog: MarketCatalog,
        *,
        checkpoints: Callable[[], Mapping[str, int]],
        database: str,
        failures: Callable[[], Mapping[str, SourceFailure]] = dict,
    ) -> None:
        self.queries = queries
        self.catalog = catalog
        self._checkpoints = checkpoints
        self._failures = failures
        self.database = database

    async def _run(self, fn: Callable[..., T], /, **kwargs: Any) -> T:
        try:
            return await asyncio.to_thread(fn, **kwargs)
        except (DBAPIError, sa_exc.TimeoutError, sa_exc.DisconnectionError) as exc:
            log.warning("history query failed", extra={"error": describe(exc)})
            raise Unavailable(
                "the history database is not available", retry_after_ms=1000, reason=Reason.STORE_FAILED
            ) from None

    # --- RPCs ------------------------------------------------------------------------------------

    @handles_errors
    async def GetOrderHistory(
        self, request: pb.GetOrderHistoryRequest, context: Any
    ) -> pb.GetOrderHistoryResponse:
        order = await self._run(self.queries.get_order, order_id=request.order_id)
        return pb.GetOrderHistoryResponse(order=self.order_message(order))

    @handles_errors
    async def ListFinishedOrders(
        self, request: pb.ListFinishedOrdersRequest, context: Any
    ) -> pb.ListFinishedOrdersResponse:
        page = await self._run(
            self.queries.list_finished_orders,
            user_id=request.user_id,
            market=request.market,
            side=request.side,
            start_time_us=request.start_time_us,
            end_time_us=request.end_time_us,
            page_size=request.page_size,
            page_token=request.page_token,
        )
        return pb.ListFinishedOrdersResponse(
            orders=[self.order_message(o) for o in page.items], next_page_token=page.next_page_token
        )

    @handles_errors
    async def ListOrderTrades(
        self, request: pb.ListOrderTradesRequest, context: Any
    ) -> pb.ListOrderTradesResponse:
        page = await self._run(
            self.queries.list_order_trades,
            order_id=request.order_id,
            page_size=request.page_size,
            page_token=request.page_token,
        )
        return pb.ListOrderTradesResponse(
            trades=[self.trade_message(t) for t in page.items], next_page_token=page.next_page_token
        )

    @handles_errors
    async def ListUserTrades(
        self, request: pb.ListUserTradesRequest, context: Any
    ) -> pb.ListUserTradesResponse:
        page = await self._run(
            self.queries.list_user_trades,
            user_id=request.user_id,
            market=request.market,
            side=request.side,
            start_time_us=request.start_time_us,
            end_time_us=request.end_time_us,
            page_size=request.page_size,
            page_token=request.page_token,
        )
        return pb.ListUserTradesResponse(
            trades=[self.trade_message(t) for t in page.items], next_page_token=page.next_page_token
        )

    @handles_errors
    async def ListBalanceHistory(
        self, request: pb.ListBalanceHistoryRequest, context: Any
    ) -> pb.ListBalanceHistoryResponse:
        page = await self._run(
            self.queries.list_balance_history,
            user_id=request.user_id,
            asset=request.asset,
            business=request.business,
            start_time_us=request.start_time_us,
            end_time_us=request.end_time_us,
            page_size=request.page_size,
            page_token=request.page_token,
        )
        return pb.ListBalanceHistoryResponse(
            entries=[self.balance_message(b) for b in page.items], next_page_token=page.next_page_token
        )

    @handles_errors
    async def GetHistoryStatus(
        self, request: pb.GetHistoryStatusRequest, context: Any
    ) -> pb.GetHistoryStatusResponse:
        checkpoints = await self._run(self._checkpoints)
        failures = self._failures()
        return pb.GetHistoryStatusResponse(
            checkpoints=dict(checkpoints),
            database=self.database,
            failed_sequences={s: f.sequence for s, f in failures.items()},
            failure_reasons={s: f.reason for s, f in failures.items()},
        )

    # --- conversions -----------------------------------------------------------------------------

    def _spec(self, market: str) -> MarketSpec | None:
        spec = self.catalog.markets.get(market)
        if spec is None:
            log.warning("stored row of a market that is not configured", extra={"market": market})
        return spec

    def order_message(self, o: OrderRecord) -> types_pb2.Order:
        return order_message(o, self._spec(o.market))

    def trade_message(self, t: UserTradeRecord) -> pb.UserTrade:
        msg = pb.UserTrade(
            trade_id=t.trade_id,
            market=t.market,
            order_id=t.order_id,
            user_id=t.user_id,
            side=t.side,  # type: ignore[arg-type]
            role=t.role,
            time_us=t.time_us,
            counter_order_id=t.counter_order_id,
            counter_user_id=t.counter_user_id,
        )
        spec = self._spec(t.market)
        if spec is None:
            return msg
        is_buy = t.side == BUY
        msg.price = spec.format_price(t.price_ticks)
        msg.amount = spec.format_amount(t.amount_lots)
        msg.quote_amount = spec.format_quote(t.quote_units)
        msg.fee = spec.base.format(t.fee) if is_buy else spec.quote.format(t.fee)
        msg.fee_asset = spec.base.symbol if is_buy else spec.quote.symbol
        return msg

    def balance_message(self, b: BalanceRecord) -> pb.BalanceHistoryEntry:
        asset = self.catalog.assets.get(b.asset)
        fmt: Callable[[int], str] = asset.format if asset is not None else str
        return pb.BalanceHistoryEntry(
            user_id=b.user_id,
            asset=b.asset,
            business=BUSINESS_NAMES.get(b.business, str(b.business)),
            business_id=b.business_id,
            available_change=fmt(b.available_delta),
            frozen_change=fmt(b.frozen_delta),
            available=fmt(b.available),
            frozen=fmt(b.frozen),
            time_us=b.time_us,
            sequence=b.sequence,
        )

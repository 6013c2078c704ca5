"""QuantizerService over gRPC: a thin adapter. Requests are checked and bounded here (the strategy is
built once to validate its parameters, a grid is planned at the known price, the owner's balance must
cover the investment), then become journaled commands of the quantizer machine; answers are read from
the machine's state."""

from __future__ import annotations

import asyncio
from typing import Any

from exchange.v1 import accounts_service_pb2 as apb
from exchange.v1 import market_service_pb2 as mpb
from exchange.v1 import quantizer_service_pb2 as qpb

from services.clients.accounts import AccountsClient
from services.clients.errors import ClientError
from services.clients.market import MarketClient
from services.common import limits
from services.common.config import QuantizerConfig
from services.common.errors import FailedPrecondition, InvalidArgument, NotFound, Reason, Unavailable, quote
from services.common.host import StateMachineHost
from services.common.markets import MarketCatalog, MarketSpec
from services.common.rpc import handles_errors
from services.quantizer.backtest import THROUGH, TOUCH, run_backtest
from services.quantizer.convert import config_of, message_fields, report_pb, slippage_ppm, strategy_pb
from services.quantizer.core import STOP_CANCEL_AND_SELL, STOP_CANCEL_ORDERS, STOP_KEEP_ORDERS
from services.quantizer.dca import preview_dca, preview_dca_fields
from services.quantizer.grid import plan_grid, preview_fields
from services.quantizer.machine import FUNDING, QuantizerMachine
from services.quantizer.params import dca_params, grid_params, ratio_ppm, strategy_from_config
from services.quantizer.report import report_fields

MAX_CLIENT_STRATEGY_ID = 64
FUNDING_WAIT_S = 10.0


class QuantizerServicer:
    def __init__(
        self,
        host: StateMachineHost[dict[str, Any], QuantizerMachine],
        catalog: MarketCatalog,
        cfg: QuantizerConfig,
        accounts: AccountsClient,
        market: MarketClient | None = None,
    ) -> None:
        self.host = host
        self.catalog = catalog
        self.cfg = cfg
        self.accounts = accounts
        self.market = market
        self.default_slippage = ratio_ppm({"s": cfg.stop_slippage}, "s")

    @property
    def machine(self) -> QuantizerMachine:
        return self.host.machine

    def _spec(self, market: str) -> MarketSpec:
        limits.check_str(market, "market", limits.MAX_SYMBOL)
        spec = self.catalog.markets.get(market)
        if spec is None:
            raise NotFound(f"unknown market {quote(market)}", Reason.UNKNOWN_MARKET)
        return spec

    def _sid(self, sid: int) -> int:
        limits.check_int(sid, "strategy_id", low=1)
        self.machine.get(sid)
        return sid

    def _price(self, spec: MarketSpec, text: str, fallback: int = 0) -> int:
        if text:
            limits.check_str(text, "price", limits.MAX_DECIMAL)
            from services.quantizer.params import price

            return price(spec, {"price": text}, "price")
        p = fallback or self.machine.prices.get(spec.symbol, 0)
        if not p:
            raise FailedPrecondition(
                f"no trade price is known for {spec.symbol} yet: give the price", Reason.NO_MARKET_PRICE
            )
        return p

    # --- create ----------------------------------------------------------------------------------

    @handles_errors
    async def CreateStrategy(
        self, request: qpb.CreateStrategyRequest, context: Any
    ) -> qpb.CreateStrategyResponse:
        limits.check_user(request.user_id)
        if request.user_id < 1:
            raise InvalidArgument("user_id is required", Reason.INVALID_FIELD)
        spec = self._spec(request.market)
        limits.check_str(request.client_strategy_id, "client_strategy_id", MAX_CLIENT_STRATEGY_ID)
        config = config_of(request)
        known = self.machine.by_client.get((request.user_id, request.client_strategy_id))
        price = self.machine.prices.get(spec.symbol, 0)
        if known is None:
            strategy = strategy_from_config(spec, self.machine.next_sid, config)  # validates
            if config["kind"] == "grid":
                p = grid_params(spec, config)
                if p.trigger or price:
                    plan_grid(spec, p, p.trigger or price)  # refuses a grid that cannot run there
            elif config["kind"] == "dca" and price:
                preview_dca(spec, dca_params(spec, config), price)
            await self._check_funds(
                request.user_id, spec, strategy.account.invested_quote, strategy.account.invested_base
            )
        command = {
            "t": "create",
            "user": request.user_id,
            "client_id": request.client_strategy_id,
            "market": spec.symbol,
            "config": config,
            "price": price,
            "slippage_ppm": self.default_slippage,
        }
        sid, duplicate = await self.host.submit(command)
        if not duplicate:
            await self._funded(sid)
        return qpb.CreateStrategyResponse(strategy=strategy_pb(self.machine, sid), duplicate=duplicate)

    async def _check_funds(self, user: int, spec: MarketSpec, quote_units: int, base_units: int) -> None:
        try:
            resp = await self.accounts.get_balances(
                apb.GetBalancesRequest(user_id=user, assets=[spec.quote.symbol, spec.base.symbol])
            )
        except ClientError as exc:
            raise Unavailable(f"accounts: {exc.message}", 500) from None
        available = {b.asset: b.available for b in resp.balances}
        for asset, need in ((spec.quote, quote_units), (spec.base, base_units)):
            if need <= 0:
                continue
            have = asset.parse(available.get(asset.symbol, "0") or "0", allow_zero=True)
            if have < need:
                raise FailedPrecondition(
                    f"insufficient {asset.symbol}: available {asset.format(have)} {asset.symbol}, the "
                    f"strategy needs {asset.format(need)} {asset.symbol}",
                    Reason.INSUFFICIENT_BALANCE,
                )

    async def _funded(self, sid: int) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + FUNDING_WAIT_S
        while self.machine.get(sid).phase == FUNDING and loop.time() < deadline:
            await asyncio.sleep(0.01)

    # --- queries ---------------------------------------------------------------------------------

    @handles_errors
    async def GetStrategy(self, request: qpb.GetStrategyRequest, context: Any) -> qpb.GetStrategyResponse:
        return qpb.GetStrategyResponse(strategy=strategy_pb(self.machine, self._sid(request.strategy_id)))

    @handles_errors
    async def ListStrategies(
        self, request: qpb.ListStrategiesRequest, context: Any
    ) -> qpb.ListStrategiesResponse:
        limits.check_user(request.user_id)
        size = limits.page_size(request.page_size)
        limits.check_str(request.page_token, "page_token", limits.MAX_PAGE_TOKEN)
        after = 0
        if request.page_token:
            if not request.page_token.isdigit() or len(request.page_token) > 19:
                raise InvalidArgument("invalid page_token", Reason.INVALID_PAGE_TOKEN)
            after = int(request.page_token)
        entries = [e for e in self.machine.user_entries(request.user_id) if e.sid > after]
        page = entries[:size]
        token = str(page[-1].sid) if len(entries) > size else ""
        return qpb.ListStrategiesResponse(
            strategies=[strategy_pb(self.machine, e.sid) for e in page], next_page_token=token
        )

    # --- control ---------------------------------------------------------------------------------

    @handles_errors
    async def PauseStrategy(
        self, request: qpb.PauseStrategyRequest, context: Any
    ) -> qpb.PauseStrategyResponse:
        sid = self._sid(request.strategy_id)
        await self.host.submit({"t": "pause", "sid": sid})
        return qpb.PauseStrategyResponse(strategy=strategy_pb(self.machine, sid))

    @handles_errors
    async def ResumeStrategy(
        self, request: qpb.ResumeStrategyRequest, context: Any
    ) -> qpb.ResumeStrategyResponse:
        sid = self._sid(request.strategy_id)
        await self.host.submit({"t": "resume", "sid": sid})
        return qpb.ResumeStrategyResponse(strategy=strategy_pb(self.machine, sid))

    @handles_errors
    async def StopStrategy(self, request: qpb.StopStrategyRequest, context: Any) -> qpb.StopStrategyResponse:
        sid = self._sid(request.strategy_id)
        mode = int(request.mode)
        if mode not in (STOP_KEEP_ORDERS, STOP_CANCEL_ORDERS, STOP_CANCEL_AND_SELL):
            raise InvalidArgument(
                "mode must be STOP_MODE_KEEP_ORDERS, STOP_MODE_CANCEL_ORDERS or STOP_MODE_CANCEL_AND_SELL",
                Reason.INVALID_FIELD,
            )
        limits.check_str(request.max_slippage, "max_slippage", limits.MAX_DECIMAL)
        slip = slippage_ppm(request.max_slippage, self.machine.get(sid).slippage_ppm)
        await self.host.submit({"t": "stop", "sid": sid, "mode": mode, "slippage_ppm": slip})
        return qpb.StopStrategyResponse(strategy=strategy_pb(self.machine, sid))

    # --- previews --------------------------------------------------------------------------------

    @handles_errors
    async def PreviewGrid(self, request: qpb.PreviewGridRequest, context: Any) -> qpb.PreviewGridResponse:
        spec = self._spec(request.market)
        p = grid_params(spec, message_fields(request.grid))
        plan = plan_grid(spec, p, self._price(spec, request.price, p.trigger))
        f = preview_fields(spec, plan)
        return qpb.PreviewGridResponse(
            levels=f["levels"],
            start_price=f["start_price"],
            empty_level=f["empty_level"],
            buy_orders=f["buy_orders"],
            sell_orders=f["sell_orders"],
            amount_per_level=f["amount_per_level"],
            initial_buy_amount=f["initial_buy_amount"],
            initial_buy_quote=f["initial_buy_quote"],
            quote_needed=f["quote_needed"],
            min_investment=f["min_investment"],
            profit_per_grid_min=f["profit_per_grid_min"],
            profit_per_grid_max=f["profit_per_grid_max"],
            profit_rate_min=f["profit_rate_min"],
            profit_rate_max=f["profit_rate_max"],
        )

    @handles_errors
    async def PreviewDca(self, request: qpb.PreviewDcaRequest, context: Any) -> qpb.PreviewDcaResponse:
        spec = self._spec(request.market)
        p = dca_params(spec, message_fields(request.dca))
        plan = preview_dca(spec, p, self._price(spec, request.price))
        f = preview_dca_fields(spec, plan)
        return qpb.PreviewDcaResponse(
            entry_price=f["entry_price"],
            safety_orders=[
                qpb.SafetyOrderPreview(
                    number=so["n"],
                    deviation=so["deviation"],
                    price=so["price"],
                    quote_amount=so["quote"],
                    amount=so["amount"],
                )
                for so in f["safety_orders"]
            ],
            deal_quote=f["deal_quote"],
            take_profit_after_base=f["take_profit_after_base"],
            take_profit_all_filled=f["take_profit_all_filled"],
            average_entry_all_filled=f["average_entry_all_filled"],
            stop_loss_price=f["stop_loss_price"],
        )

    # --- backtest --------------------------------------------------------------------------------

    @handles_errors
    async def BacktestStrategy(
        self, request: qpb.BacktestStrategyRequest, context: Any
    ) -> qpb.BacktestStrategyResponse:
        """Over the market service's recent trades (at most 1,000) within the time range; longer
        backtests run from a CSV file (`exchange backtest`, services.quantizer.backtest)."""
        spec = self._spec(request.market)
        config = config_of(request)
        limits.check_time(request.start_time_us, "start_time_us")
        limits.check_time(request.end_time_us, "end_time_us")
        model = {0: TOUCH, 1: TOUCH, 2: THROUGH}.get(int(request.fill_model))
        if model is None:
            raise InvalidArgument("unknown fill_model", Reason.INVALID_FIELD)
        strategy = strategy_from_config(spec, 1, config)
        if self.market is None:
            raise Unavailable("no market data service configured", 1000)
        try:
            resp = await self.market.list_recent_trades(
                mpb.ListRecentTradesRequest(market=spec.symbol, limit=limits.MAX_RECENT_TRADES)
            )
        except ClientError as exc:
            raise Unavailable(f"market data: {exc.message}", 1000) from None
        trades = []
        for t in sorted(resp.trades, key=lambda t: (t.time_us, t.trade_id)):
            if request.start_time_us and t.time_us < request.start_time_us:
                continue
            if request.end_time_us and t.time_us > request.end_time_us:
                continue
            trades.append(
                (t.time_us, spec.parse_price(t.price), spec.parse_amount(t.amount), int(t.taker_side))
            )
        result = await asyncio.to_thread(run_backtest, spec, strategy, trades, fill_model=model)
        return qpb.BacktestStrategyResponse(
            report=report_pb(spec, report_fields(spec, result.report)),
            trades=result.trades,
            counter_orders=result.counter_orders,
            equity=[qpb.EquityPoint(time_us=t, value=spec.format_quote(v)) for t, v in result.equity],
        )

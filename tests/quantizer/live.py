"""Helpers of the quantizer's process tests: a real exchange (testkit Cluster: matching, accounts and
the quantizer as processes) driven by scripted counter-orders, and the export of what traded.

The scripted grid (GRID on BTC_USDT at 30000): levels 29000, 29500, 30000, 30500, 31000; it starts with
buys at 29000 and 29500 and sells at 30500 and 31000 (the base bought at start from user 2's offer).
Each FLOW step is an IOC order of user 3 on the best price of the other side, for the remaining amount
of the strategy's order there: exactly one of the strategy's orders fills per step.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from exchange.v1 import accounts_service_pb2 as apb
from exchange.v1 import accounts_service_pb2_grpc as agrpc
from exchange.v1 import events_pb2 as ev
from exchange.v1 import quantizer_service_pb2 as qpb
from exchange.v1 import quantizer_service_pb2_grpc as qgrpc

from services.common.markets import MarketSpec
from testkit.cluster import Cluster

MARKET = "BTC_USDT"
OWNER, MAKER, TAKER = 1, 2, 3
BUY, SELL = 1, 2
GRID = qpb.GridConfig(
    lower_price="29000",
    upper_price="31000",
    intervals=4,
    spacing=qpb.GRID_SPACING_ARITHMETIC,
    investment="1000",
)
# (taker side, price): the strategy's order at that price is the best of its side.
FLOW: list[tuple[int, str]] = [
    (SELL, "29500"),
    (BUY, "30000"),
    (BUY, "30500"),
    (BUY, "31000"),
    (SELL, "30500"),
    (SELL, "30000"),
    (BUY, "30500"),
    (SELL, "30000"),
    (BUY, "30500"),
]
# Steps 2 and 3 (0-based) only take asks: the strategy's reactions (bids) cannot change them, so they
# may happen while the quantizer is down.
DOWN_STEPS = (2, 3)


def wait_for(what: str, check: Callable[[], Any], timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.05)
    raise TimeoutError(f"{what}: still {last!r} after {timeout}s")


class Live:
    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.spec: MarketSpec = cluster.config.catalog.markets[MARKET]

    @property
    def accounts(self) -> agrpc.AccountsServiceStub:
        return self.cluster.accounts

    def accounts_of(self, user: int) -> agrpc.AccountsServiceStub:
        """The accounts shard that owns `user` (the one accounts process unless sharded by user)."""
        return self.cluster.accounts_of(user)

    @property
    def quantizer(self) -> qgrpc.QuantizerServiceStub:
        return qgrpc.QuantizerServiceStub(self.cluster.channel("quantizer-0"))

    # --- the exchange side -----------------------------------------------------------------------

    def deposit(self, user: int, asset: str, amount: str) -> None:
        self.accounts_of(user).Deposit(
            apb.DepositRequest(
                user_id=user,
                asset=asset,
                amount=amount,
                business="test",
                business_id=f"{user}-{asset}-{amount}",
            ),
            timeout=10,
        )

    def order(
        self, user: int, side: int, price: str, amount: str, *, ioc: bool = False
    ) -> apb.PlaceOrderResponse:
        resp: apb.PlaceOrderResponse = self.accounts_of(user).PlaceOrder(
            apb.PlaceOrderRequest(
                user_id=user,
                market=MARKET,
                side=side,  # type: ignore[arg-type]
                type=1,  # type: ignore[arg-type]
                time_in_force=2 if ioc else 1,  # type: ignore[arg-type]
                price=price,
                amount=amount,
            ),
            timeout=10,
        )
        return resp

    def open_orders(self, user: int) -> list[apb.Order]:
        return list(
            self.accounts_of(user).ListOpenOrders(apb.ListOpenOrdersRequest(user_id=user), timeout=10).orders
        )

    def balances(self, user: int) -> dict[str, tuple[int, int]]:
        out: dict[str, tuple[int, int]] = {}
        catalog = self.cluster.config.catalog
        resp = self.accounts_of(user).GetBalances(apb.GetBalancesRequest(user_id=user), timeout=10)
        for b in resp.balances:
            a = catalog.assets[b.asset]
            out[b.asset] = (a.parse(b.available, allow_zero=True), a.parse(b.frozen, allow_zero=True))
        return out

    def setup_market(self) -> None:
        """Funds, and a first trade at 30000 (the price the grid starts at); user 2 keeps an offer at
        30000 for the grid's initial purchase."""
        self.deposit(OWNER, "USDT", "5000")
        self.deposit(MAKER, "BTC", "1")
        self.deposit(TAKER, "USDT", "100000")
        self.deposit(TAKER, "BTC", "1")
        self.order(MAKER, SELL, "30000", "0.1")
        self.order(TAKER, BUY, "30000", "0.001")
        self.cluster.wait_quiet()

    # --- the quantizer side ----------------------------------------------------------------------

    def create(
        self, grid: qpb.GridConfig = GRID, client_id: str = "grid-1", user: int = OWNER
    ) -> qpb.Strategy:
        deadline = time.monotonic() + 20
        while True:  # the quantizer learns the first price from its feed
            try:
                resp = self.quantizer.CreateStrategy(
                    qpb.CreateStrategyRequest(
                        user_id=user, market=MARKET, grid=grid, client_strategy_id=client_id
                    ),
                    timeout=20,
                )
                return resp.strategy
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def create_request(self, request: qpb.CreateStrategyRequest) -> qpb.CreateStrategyResponse:
        resp: qpb.CreateStrategyResponse = self.quantizer.CreateStrategy(request, timeout=20)
        return resp

    def strategy(self, sid: int) -> qpb.Strategy:
        s: qpb.Strategy = self.quantizer.GetStrategy(
            qpb.GetStrategyRequest(strategy_id=sid), timeout=10
        ).strategy
        return s

    def settled(self, sid: int, fills: int, open_orders: int = 4) -> qpb.Strategy:
        """Wait until the strategy booked `fills` fills and both it and the exchange hold `open_orders`."""

        def check() -> qpb.Strategy | None:
            s = self.strategy(sid)
            if s.report.fills != fills or s.report.open_orders != open_orders:
                return None
            if len(self.open_orders(s.trading_user_id)) != open_orders:
                return None
            return s

        try:
            result: qpb.Strategy = wait_for(f"strategy {sid} at {fills} fills", check)
        except TimeoutError as exc:
            s = self.strategy(sid)
            raise TimeoutError(f"{exc}\n{s}\n{self.open_orders(s.trading_user_id)}") from None
        return result

    def start_grid(self) -> qpb.Strategy:
        s = self.create()
        s = self.settled(s.strategy_id, fills=1)
        self.accounts_of(MAKER).CancelAllOrders(
            apb.CancelAllOrdersRequest(user_id=MAKER, market=MARKET), timeout=10
        )
        self.cluster.wait_quiet()
        return s

    def step(self, trading_user: int, side: int, price: str) -> None:
        """User 3 takes the strategy's order at `price` (the best of its side), all of it."""
        ticks = self.spec.parse_price(price)
        mine = [o for o in self.open_orders(trading_user) if self.spec.parse_price(o.price) == ticks]
        assert len(mine) == 1, f"expected one order of the strategy at {price}, found {mine}"
        self.order(TAKER, side, price, mine[0].remaining_amount, ioc=True)
        self.cluster.wait_quiet()

    # --- what happened ---------------------------------------------------------------------------

    def account_events(self) -> list[ev.AccountEvent]:
        out: list[ev.AccountEvent] = []
        st = self.accounts.GetAccountsStatus(apb.GetAccountsStatusRequest(), timeout=10)
        stream = self.accounts.StreamAccountEvents(
            apb.StreamAccountEventsRequest(from_sequence=1), timeout=30
        )
        for resp in stream:
            out.extend(resp.events)
            if out and out[-1].sequence >= st.event_sequence:
                stream.cancel()
                break
        return out

    def exported_flow(self, trading_user: int) -> list[tuple[int, int, int, int]]:
        """The market's trades as a backtest reads them (time, price ticks, lots, taker side), except
        the strategy's own market orders (a backtest fills those against the last price itself)."""
        flow = []
        for e in self.account_events():
            if e.WhichOneof("event") != "user_fill":
                continue
            f = e.user_fill
            if f.role == 2 and f.market == MARKET and e.user_id != trading_user:
                flow.append((e.time_us, f.price_ticks, f.amount_lots, int(f.side)))
        return flow

    def strategy_fills(self, trading_user: int) -> list[tuple[int, int, int, int]]:
        """(side, price, lots, fee) of every fill of the strategy's orders, in order."""
        return [
            (int(e.user_fill.side), e.user_fill.price_ticks, e.user_fill.amount_lots, e.user_fill.fee_units)
            for e in self.account_events()
            if e.WhichOneof("event") == "user_fill" and e.user_id == trading_user
        ]

    def orders_created(self, trading_user: int) -> set[int]:
        return {
            e.order_updated.order_id
            for e in self.account_events()
            if e.WhichOneof("event") == "order_updated" and e.user_id == trading_user
        }


def report_figures(r: qpb.StrategyReport) -> dict[str, Any]:
    """The report without what depends on wall-clock time (elapsed, annualized return)."""
    return {
        f.name: getattr(r, f.name)
        for f in r.DESCRIPTOR.fields
        if f.name not in ("elapsed_us", "annualized_return")
    }


def new_cluster(
    tmp: Path, *, with_market: bool = False, accounts_shards: int = 1, **quantizer_options: Any
) -> Cluster:
    return Cluster(
        tmp,
        with_quantizer=True,
        quantizer_options=quantizer_options,
        with_market=with_market,
        accounts_shards=accounts_shards,
    )

"""The hosted QuantizerService in a real exchange (matching, accounts and the quantizer as processes):
a live grid against scripted counter-orders, the same flow backtested (identical fills and profit),
kill -9 of the quantizer mid-run, and the restart's reconciliation."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from exchange.v1 import accounts_service_pb2 as apb
from exchange.v1 import quantizer_service_pb2 as qpb

from services.quantizer.backtest import run_backtest
from services.quantizer.convert import config_of, report_pb
from services.quantizer.core import Fill, Strategy
from services.quantizer.params import strategy_from_config
from services.quantizer.report import report_fields
from testkit.cluster import Cluster
from tests.quantizer.live import BUY, DOWN_STEPS, FLOW, GRID, MARKET, OWNER, Live, new_cluster, report_figures

pytestmark = pytest.mark.slow


def backtest(live: Live, flow: list[tuple[int, int, int, int]]) -> tuple[qpb.StrategyReport, list[Any]]:
    """The same grid over the exported flow; its report and its fills (side, price, lots, fee)."""
    spec = live.spec
    config = config_of(qpb.CreateStrategyRequest(market=MARKET, grid=GRID))
    strategy: Strategy = strategy_from_config(spec, 1, config)
    fills: list[Any] = []
    apply = strategy.apply

    def recording(event: Any) -> Any:
        if isinstance(event, Fill):
            fills.append((event.side, event.price, event.lots, event.fee))
        return apply(event)

    strategy.apply = recording  # type: ignore[method-assign]
    result = run_backtest(spec, strategy, flow)
    return report_pb(spec, report_fields(spec, result.report)), fills


def run_flow(live: Live, trading_user: int, sid: int, steps: range, fills: int) -> int:
    for i in steps:
        side, price = FLOW[i]
        live.step(trading_user, side, price)
        fills += 1
        live.settled(sid, fills)
    return fills


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """One live grid through the whole FLOW, never interrupted."""
    cluster = new_cluster(tmp_path_factory.mktemp("uninterrupted") / "exchange")
    try:
        cluster.start()
        live = Live(cluster)
        live.setup_market()
        s = live.start_grid()
        run_flow(live, s.trading_user_id, s.strategy_id, range(len(FLOW)), 1)
        final = live.strategy(s.strategy_id)
        yield {
            "strategy": final,
            "flow": live.exported_flow(s.trading_user_id),
            "fills": live.strategy_fills(s.trading_user_id),
            "orders": live.orders_created(s.trading_user_id),
            "live": live,
        }
    finally:
        cluster.stop()


def test_live_grid_against_scripted_counter_orders(uninterrupted: dict[str, Any]) -> None:
    s: qpb.Strategy = uninterrupted["strategy"]
    r = s.report
    assert s.state == qpb.STRATEGY_STATE_RUNNING
    # 1 initial purchase + one fill per step; 5 of the 9 steps complete a buy/sell pair
    assert r.fills == 1 + len(FLOW) == len(uninterrupted["fills"])
    assert r.matched_pairs == 5
    assert r.open_orders == 4
    assert r.orders_placed == len(uninterrupted["orders"]) == 5 + len(FLOW)
    assert float(r.realized_profit) > 0
    assert s.client_strategy_id == "grid-1" and s.grid.intervals == 4


def test_live_matches_backtest_of_the_exported_flow(uninterrupted: dict[str, Any]) -> None:
    """Acceptance (issue 10, point 7): the live grid's flow exported and backtested with the same
    configuration gives identical fills and realized profit (and every other figure but time)."""
    live: Live = uninterrupted["live"]
    report, fills = backtest(live, uninterrupted["flow"])
    assert fills == uninterrupted["fills"]
    assert report.realized_profit == uninterrupted["strategy"].report.realized_profit
    assert report_figures(report) == report_figures(uninterrupted["strategy"].report)


def test_kill9_mid_run_then_restart(tmp_path: Path, uninterrupted: dict[str, Any]) -> None:
    """kill -9 of the quantizer mid-run; trades while it is down; restart: no double orders, no lost
    fills, and the same final report as the uninterrupted run."""
    cluster: Cluster = new_cluster(tmp_path / "exchange")
    try:
        cluster.start()
        live = Live(cluster)
        live.setup_market()
        s = live.start_grid()
        sid, trader = s.strategy_id, s.trading_user_id
        fills = run_flow(live, trader, sid, range(DOWN_STEPS[0]), 1)
        cluster.kill("quantizer-0")  # SIGKILL
        for i in DOWN_STEPS:  # fills while it is down
            side, price = FLOW[i]
            live.step(trader, side, price)
            fills += 1
        # a stray: an order in the strategy's account that the strategy did not place (paid with
        # funds of its own, so the strategy's orders are not short of any)
        if trader != OWNER:
            live.accounts.Transfer(
                apb.TransferRequest(
                    from_user_id=OWNER, to_user_id=trader, asset="USDT", amount="28", transfer_id="stray"
                ),
                timeout=10,
            )
        stray = live.order(trader, BUY, "28000", "0.001").order.order_id
        cluster.start(["quantizer-0"])
        live.settled(sid, fills)  # (4 open orders on the exchange: the stray was canceled)
        assert stray not in {o.order_id for o in live.open_orders(trader)}
        fills = run_flow(live, trader, sid, range(DOWN_STEPS[-1] + 1, len(FLOW)), fills)
        final = live.strategy(sid)
        # no lost fills, none twice
        assert final.report.fills == fills == len(live.strategy_fills(trader))
        # no double orders: every order the exchange created for the strategy is one the strategy placed
        created = live.orders_created(trader) - {stray}
        assert len(created) == final.report.orders_placed
        prices = [o.price for o in live.open_orders(trader)]
        assert len(prices) == len(set(prices)) == 4
        assert report_figures(final.report) == report_figures(uninterrupted["strategy"].report)
        report, bt_fills = backtest(live, live.exported_flow(trader))
        assert bt_fills == live.strategy_fills(trader)
        assert report_figures(report) == report_figures(final.report)
    finally:
        cluster.stop()

"""Reconciliation after a crash between the journal write and the order entry: the quantizer (in this
process, on a real exchange) journals a fill and the reverse order it decided on, but the effects are
lost (the executor's hook is taken away: what a crash right after the journal write leaves). A new
quantizer on the same data directory replays the journal and places the missing order, with the same
client order id, exactly once."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from exchange.v1 import quantizer_service_pb2 as qpb

from services.common.rpc import configure
from services.common.security import process_security
from services.quantizer.__main__ import Quantizer
from services.quantizer.convert import config_of
from tests.quantizer.live import BUY, GRID, MAKER, MARKET, OWNER, SELL, TAKER, Live, new_cluster, wait_for

pytestmark = pytest.mark.slow


async def until(what: str, check: object, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        await asyncio.sleep(0.05)


def test_missing_orders_are_placed_again_after_a_crash(tmp_path: Path) -> None:
    cluster = new_cluster(tmp_path / "exchange")
    try:
        cluster.start(["matching-0", "accounts-0"])
        live = Live(cluster)
        live.deposit(OWNER, "USDT", "5000")
        live.deposit(MAKER, "BTC", "1")
        live.deposit(TAKER, "USDT", "100000")
        live.deposit(TAKER, "BTC", "1")
        live.order(MAKER, SELL, "30000", "0.1")
        live.order(TAKER, BUY, "30000", "0.001")
        cluster.wait_quiet()
        configure(process_security(cluster.config, "quantizer"))
        config = config_of(qpb.CreateStrategyRequest(market=MARKET, grid=GRID))
        price = live.spec.parse_price("30000")  # ticks

        async def first_life() -> tuple[int, int, str]:
            app = Quantizer(cluster.config)
            await app.start()
            m = app.host.machine
            # (it started after the last trade: the create names its start price)
            sid, _ = await app.host.submit(
                {
                    "t": "create",
                    "user": OWNER,
                    "client_id": "r",
                    "market": MARKET,
                    "config": config,
                    "price": price,
                }
            )
            await until("running", lambda: len(m.entries[sid].strategy.orders) == 4)
            e = m.entries[sid]
            await until("placed", lambda: len(live.open_orders(e.trading_user)) == 4)
            app.host.on_effects.remove(app.executor.hook)  # from here on, effects are lost
            await asyncio.to_thread(live.step, e.trading_user, SELL, "29500")
            await until("the fill journaled", lambda: e.strategy.account.fills == 2)
            missing = [o.cid for o in e.strategy.open_orders() if o.tag == "s" and o.level == 2]
            assert missing, e.strategy.open_orders()
            await app.stop()
            return sid, e.trading_user, missing[0]

        _, trader, cid = asyncio.run(first_life())
        assert cid not in {o.client_order_id for o in live.open_orders(trader)}  # never sent

        async def second_life() -> dict[str, int]:
            app = Quantizer(cluster.config)
            await app.start()
            await asyncio.wait_for(app.reconciled.wait(), 30)
            await app.executor.idle()
            await asyncio.to_thread(
                wait_for, "re-placed", lambda: cid in {o.client_order_id for o in live.open_orders(trader)}
            )
            stats = dict(app.reconcile_stats)
            await app.stop()
            return stats

        stats = asyncio.run(second_life())
        assert stats["replaced"] == 1 and stats["strays"] == 0
        orders = live.open_orders(trader)
        assert len(orders) == 4 and [o.client_order_id for o in orders].count(cid) == 1
    finally:
        cluster.stop()

"""gRPC level, in process: HistoryApp (consumers + HistoryService) against fake upstream streams that
resend, fail and end now and then; then the service's answers and status codes."""

from __future__ import annotations

import asyncio
import logging
import os
import time
import tomllib
from pathlib import Path
from typing import Any

import grpc
import pytest
from exchange.v1 import history_service_pb2 as pb
from exchange.v1 import history_service_pb2_grpc as pbg
from grpc_health.v1 import health_pb2, health_pb2_grpc
from sqlalchemy import Engine

from services.common.config import ExchangeConfig, config_from_dict
from services.common.rpc import channel, error_reason
from services.history import schema
from services.history.app import HistoryApp
from services.history.service import SERVICE_NAME
from testkit.cluster import DEFAULT_MARKETS
from testkit.fake_upstream import FakeUpstreams, sources_of
from testkit.history_sim import (
    ACCOUNTS,
    Flow,
    expected_balances,
    expected_orders,
    expected_trades,
    table_rows,
)


def make_config(fakes: FakeUpstreams, tmp_path: Path, db_url: str) -> ExchangeConfig:
    text = fakes.config_toml("127.0.0.1:0", db_url, DEFAULT_MARKETS)
    return config_from_dict(tomllib.loads(text), base_dir=tmp_path)


async def wait_for(
    app: HistoryApp, stub: pbg.HistoryServiceStub, want: dict[str, int], timeout: float = 60
) -> None:
    deadline = time.monotonic() + timeout
    status = None
    while time.monotonic() < deadline:
        status = await stub.GetHistoryStatus(pb.GetHistoryStatusRequest(), timeout=5)
        if dict(status.checkpoints) == want:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"checkpoints {status and dict(status.checkpoints)} never reached {want}")


async def expect_code(code: grpc.StatusCode, call: Any) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    assert info.value.code() == code, info.value.details()
    return str(info.value.details())


def test_consume_and_serve(tmp_path: Path, db_url: str, engine: Engine, small_flow: Flow) -> None:
    with FakeUpstreams(small_flow, per_response=37, fail_every=7, end_every=11, resend=13) as fakes:
        config = make_config(fakes, tmp_path, db_url)
        want = sources_of(fakes.feeds)

        async def body() -> None:
            app = HistoryApp(config, page_token_key=os.urandom(32))
            await app.start()
            assert app.server is not None
            try:
                async with channel(f"127.0.0.1:{app.server.port}") as ch:
                    stub = pbg.HistoryServiceStub(ch)
                    health = health_pb2_grpc.HealthStub(ch)
                    resp = await health.Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=5)
                    assert resp.status == health_pb2.HealthCheckResponse.SERVING
                    await wait_for(app, stub, want)
                    status = await stub.GetHistoryStatus(pb.GetHistoryStatusRequest())
                    assert status.database.startswith(db_url.split(":", 1)[0])
                    await check_answers(stub, small_flow)
            finally:
                await app.stop()

        asyncio.run(body())
        # every reconnect resumed right after what was stored (the fakes fail every 7 responses)
        for feed in fakes.feeds.values():
            assert len(feed.requests) > 1
            assert feed.requests[0] == 1 and feed.requests == sorted(feed.requests)
    assert table_rows(engine, schema.trades) == expected_trades(small_flow)
    assert table_rows(engine, schema.orders) == expected_orders(small_flow)
    assert table_rows(engine, schema.balance_history) == expected_balances(small_flow)


async def check_answers(stub: pbg.HistoryServiceStub, flow: Flow) -> None:
    trade = flow.trades()[10]
    t = trade.trade_executed
    user = t.taker_user_id
    # a user's trades: page through, find the trade's taker side, formatted
    seen: list[pb.UserTrade] = []
    token = ""
    while True:
        page = await stub.ListUserTrades(
            pb.ListUserTradesRequest(user_id=user, page_size=25, page_token=token)
        )
        seen.extend(page.trades)
        token = page.next_page_token
        if not token:
            break
    assert len({(x.market, x.trade_id, x.role) for x in seen}) == len(seen)
    [mine] = [x for x in seen if (x.market, x.trade_id, x.role) == (trade.market, t.trade_id, "taker")]
    from testkit.accounts_sim import default_catalog
    from testkit.history_sim import SHARDS

    spec = default_catalog(SHARDS).markets[trade.market]
    assert mine.price == spec.format_price(t.price_ticks)
    assert mine.amount == spec.format_amount(t.amount_lots)
    assert mine.quote_amount == spec.format_quote(t.quote_units)
    assert mine.order_id == t.taker_order_id and mine.counter_order_id == t.maker_order_id
    assert mine.fee_asset == (spec.base.symbol if t.taker_side == 1 else spec.quote.symbol)
    assert mine.fee == (
        spec.base.format(t.taker_fee) if t.taker_side == 1 else spec.quote.format(t.taker_fee)
    )
    # the order's trades include it
    order_trades = await stub.ListOrderTrades(
        pb.ListOrderTradesRequest(order_id=t.taker_order_id, page_size=1000)
    )
    assert t.trade_id in {x.trade_id for x in order_trades.trades if x.market == trade.market}
    # the order by id
    order = (await stub.GetOrderHistory(pb.GetOrderHistoryRequest(order_id=t.taker_order_id))).order
    final = flow.final_orders()[t.taker_order_id]
    assert order.user_id == user and order.status == final.order_updated.status
    assert order.filled_amount == spec.format_amount(final.order_updated.filled_lots)
    # finished orders
    finished = await stub.ListFinishedOrders(pb.ListFinishedOrdersRequest(user_id=user, page_size=1000))
    assert finished.orders and all(o.status in (4, 5, 6, 7) for o in finished.orders)
    # balance history, formatted with the asset's decimals
    entries = await stub.ListBalanceHistory(
        pb.ListBalanceHistoryRequest(user_id=user, asset="USDT", page_size=5)
    )
    assert len(entries.entries) == 5 and entries.next_page_token
    want = [e for e in flow.balance_changes() if e.user_id == user and e.balance_changed.asset == "USDT"][-1]
    top = entries.entries[0]
    b = want.balance_changed
    assert (top.sequence, top.time_us) == (want.sequence, want.time_us)
    assert top.available == format_usdt(b.available) and top.available_change == format_usdt(
        b.available_delta
    )
    assert top.frozen == format_usdt(b.frozen) and top.frozen_change == format_usdt(b.frozen_delta)
    assert top.business in {"deposit", "withdraw", "order_freeze", "order_unfreeze", "trade", "fee"}

    # bad requests -> status codes
    bad_token = entries.next_page_token[:-4] + "AAAA"
    await expect_code(
        grpc.StatusCode.INVALID_ARGUMENT,
        stub.ListBalanceHistory(
            pb.ListBalanceHistoryRequest(user_id=user, asset="USDT", page_token=bad_token)
        ),
    )
    await expect_code(
        grpc.StatusCode.INVALID_ARGUMENT,
        stub.ListBalanceHistory(pb.ListBalanceHistoryRequest(user_id=user, page_token="%%%")),
    )
    await expect_code(
        grpc.StatusCode.INVALID_ARGUMENT,
        stub.ListUserTrades(pb.ListUserTradesRequest(user_id=user, start_time_us=20, end_time_us=10)),
    )
    await expect_code(
        grpc.StatusCode.INVALID_ARGUMENT,
        stub.ListBalanceHistory(pb.ListBalanceHistoryRequest(user_id=user, business="lottery")),
    )
    details = await expect_code(
        grpc.StatusCode.NOT_FOUND,
        stub.ListFinishedOrders(pb.ListFinishedOrdersRequest(user_id=user, market="NOPE_USDT")),
    )
    assert "NOPE_USDT" in details
    await expect_code(
        grpc.StatusCode.NOT_FOUND,
        stub.ListBalanceHistory(pb.ListBalanceHistoryRequest(user_id=user, asset="NOPE")),
    )
    await expect_code(
        grpc.StatusCode.NOT_FOUND, stub.GetOrderHistory(pb.GetOrderHistoryRequest(order_id=10**12))
    )
    await expect_code(grpc.StatusCode.INVALID_ARGUMENT, stub.GetOrderHistory(pb.GetOrderHistoryRequest()))
    # API-edge bounds, with their reasons (ErrorInfo)
    for big in (2**63, 2**64 - 1):
        for call in (
            stub.ListFinishedOrders(pb.ListFinishedOrdersRequest(user_id=big)),
            stub.ListUserTrades(pb.ListUserTradesRequest(user_id=big)),
            stub.ListBalanceHistory(pb.ListBalanceHistoryRequest(user_id=big)),
            stub.GetOrderHistory(pb.GetOrderHistoryRequest(order_id=big)),
            stub.ListOrderTrades(pb.ListOrderTradesRequest(order_id=big)),
        ):
            assert await expect_reason(grpc.StatusCode.INVALID_ARGUMENT, call) == "VALUE_OUT_OF_RANGE"
    reason = await expect_reason(
        grpc.StatusCode.INVALID_ARGUMENT,
        stub.ListBalanceHistory(
            pb.ListBalanceHistoryRequest(user_id=user, asset="USDT", page_token=bad_token)
        ),
    )
    assert reason == "INVALID_PAGE_TOKEN"
    long_market = pb.ListUserTradesRequest(user_id=user, market="X" * 100_000)
    assert await expect_reason(grpc.StatusCode.INVALID_ARGUMENT, stub.ListUserTrades(long_market)) == (
        "FIELD_TOO_LONG"
    )
    unknown = stub.ListUserTrades(pb.ListUserTradesRequest(user_id=user, market="NOPE_USDT"))
    assert await expect_reason(grpc.StatusCode.NOT_FOUND, unknown) == "UNKNOWN_MARKET"
    big_page = await stub.ListBalanceHistory(pb.ListBalanceHistoryRequest(user_id=user, page_size=100_000))
    assert 0 < len(big_page.entries) <= 1000


async def expect_reason(code: grpc.StatusCode, call: Any) -> str:
    """The ErrorInfo reason of a call that fails with `code`; its message is short."""
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    assert info.value.code() == code, info.value.details()
    assert len(info.value.details() or "") < 200
    return error_reason(info.value)


def format_usdt(units: int) -> str:
    from services.common.units import format_units

    return format_units(units, 8)


def test_out_of_range_is_an_error_and_retried(
    tmp_path: Path, small_flow: Flow, caplog: pytest.LogCaptureFixture
) -> None:
    """Upstream no longer has the events after our checkpoint: error log, slow retries, nothing skipped."""
    db_url = f"sqlite:///{tmp_path / 'history.sqlite'}"
    with FakeUpstreams(small_flow, first_kept=50) as fakes:
        config = make_config(fakes, tmp_path, db_url)

        async def body() -> None:
            app = HistoryApp(config, page_token_key=os.urandom(32))
            for c in app.consumers:
                c.out_of_range_retry_s = 0.2
            with caplog.at_level(logging.ERROR, logger="services.history.consumer"):
                await app.start()
                try:
                    await asyncio.sleep(1.0)
                    assert all(c.checkpoint == 0 for c in app.consumers)
                    assert await asyncio.to_thread(app.store.checkpoints) == {}
                    errors = [r for r in caplog.records if "no longer has the events" in r.getMessage()]
                    assert {getattr(r, "source", "") for r in errors} == set(fakes.feeds)
                    for feed in fakes.feeds.values():
                        assert 2 <= len(feed.requests) <= 10 and set(feed.requests) == {1}
                    # the operator brings the events back: history catches up from 1
                    fakes.set(first_kept=1)
                    deadline = time.monotonic() + 30
                    while await asyncio.to_thread(app.store.checkpoints) != sources_of(fakes.feeds):
                        assert time.monotonic() < deadline
                        await asyncio.sleep(0.05)
                finally:
                    await app.stop()

        asyncio.run(body())


def test_stop_during_ingest_keeps_a_consistent_checkpoint(tmp_path: Path, small_flow: Flow) -> None:
    """SIGTERM-style stop mid-stream: what is stored matches the checkpoint; a restart completes it."""
    db_url = f"sqlite:///{tmp_path / 'history.sqlite'}"
    with FakeUpstreams(small_flow, per_response=20, delay_s=0.005) as fakes:
        config = make_config(fakes, tmp_path, db_url)

        async def run_for(seconds: float | None) -> dict[str, int]:
            app = HistoryApp(config, page_token_key=os.urandom(32))
            await app.start()
            try:
                if seconds is None:
                    deadline = time.monotonic() + 30
                    while await asyncio.to_thread(app.store.checkpoints) != sources_of(fakes.feeds):
                        assert time.monotonic() < deadline
                        await asyncio.sleep(0.05)
                else:
                    await asyncio.sleep(seconds)
            finally:
                await app.stop()
            return await asyncio.to_thread(app.store.checkpoints)

        partial = asyncio.run(run_for(0.5))
        assert partial and partial != sources_of(fakes.feeds)
        assert fakes.feeds[ACCOUNTS].requests[-1] == 1
        asyncio.run(run_for(None))
        assert fakes.feeds[ACCOUNTS].requests[-1] == partial.get(ACCOUNTS, 0) + 1
    from services.history.store import create_history_engine

    engine = create_history_engine(db_url)
    try:
        assert table_rows(engine, schema.trades) == expected_trades(small_flow)
        assert table_rows(engine, schema.orders) == expected_orders(small_flow)
        assert table_rows(engine, schema.balance_history) == expected_balances(small_flow)
    finally:
        engine.dispose()

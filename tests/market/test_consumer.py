"""The market-data consumer against events it cannot apply: no silent spin. The shard stops at that
event (the events before it are applied), MarketService reports NOT_SERVING, exchange_market_apply_failed
is 1, ONE log line says so, and the consumer retries slowly and resumes by itself once the event
applies; an unexpected error while applying is handled the same way (its traceback logged once)."""

from __future__ import annotations

import asyncio
import logging
import time
import tomllib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from exchange.v1 import events_pb2 as ev
from exchange.v1 import market_service_pb2 as pb
from grpc_health.v1 import health_pb2
from prometheus_client import REGISTRY

from services.clients import MarketClient
from services.common.config import config_from_dict
from services.market.app import SERVICE_NAME, MarketDataApp
from services.market.state import MarketDataState
from testkit.cluster import DEFAULT_MARKETS
from testkit.fake_upstream import FakeUpstreams
from testkit.history_sim import Flow
from tests.market.sim import Generator, default_catalog

SHARD = "matching-0"
MARKETS = ["BTC_USDT", "ETH_USDT"]
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def flow_of(events: list[ev.MatchingEvent]) -> Flow:
    return Flow(matching={SHARD: list(events)}, accounts=[])


def straight(events: list[ev.MatchingEvent]) -> MarketDataState:
    state = MarketDataState(default_catalog().markets.values())
    state.apply_batch(SHARD, events)
    return state


async def until(cond: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def gauge() -> float | None:
    return REGISTRY.get_sample_value("exchange_market_apply_failed", {"shard": SHARD})


def run_market(
    fakes: FakeUpstreams,
    tmp_path: Path,
    body: Callable[[MarketDataApp, Any], Awaitable[None]],
    prepare: Callable[[MarketDataApp], None] | None = None,
) -> None:
    text = "\n".join(
        [
            'data_dir = "data"',
            f'[shards."{SHARD}"]',
            f'listen = "{fakes.addresses[SHARD]}"',
            "[market]",
            'listen = "127.0.0.1:0"',
            "[assets]" + DEFAULT_MARKETS,
        ]
    )
    config = config_from_dict(tomllib.loads(text), base_dir=tmp_path)

    async def main() -> None:
        app = MarketDataApp(config)
        for c in app.consumers:
            c.apply_failed_retry_s = 0.1
            c.lag_poll_s = 0
        if prepare is not None:
            prepare(app)
        await app.start()
        assert app.server is not None
        market = MarketClient.at(f"127.0.0.1:{app.server.port}")
        try:
            await body(app, market)
        finally:
            await market.close()
            await app.stop()

    asyncio.run(main())


async def health_of(market: MarketClient, service: str = SERVICE_NAME) -> int:
    return await market.health(service)


def messages(caplog: pytest.LogCaptureFixture, prefix: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.getMessage().startswith(prefix)]


async def stops_then_resumes(
    app: MarketDataApp,
    ch: Any,
    fakes: FakeUpstreams,
    events: list[ev.MatchingEvent],
    seq: int,
    fix: Callable[[], None],
    caplog: pytest.LogCaptureFixture,
    *,
    traceback: bool,
) -> None:
    feed = fakes.feeds[SHARD]
    await until(lambda: SHARD in app.failures(), "the failure")
    assert app.state.checkpoint(SHARD) == seq - 1
    assert app.failures()[SHARD].sequence == seq
    assert await health_of(ch) == NOT_SERVING
    assert await health_of(ch, "") == SERVING
    assert gauge() == 1
    # queries keep being answered, from the state before the bad event
    depth = await ch.get_market_depth(pb.GetMarketDepthRequest(market="BTC_USDT", limit=50))
    assert depth.sequence == seq - 1
    # slow retries from the checkpoint, one log line
    n = len(feed.requests)
    mark = len(caplog.records)
    await until(lambda: len(feed.requests) >= n + 3, "three more retries")
    assert set(feed.requests[n:]) == {seq}
    later = [r for r in caplog.records[mark:] if r.name.startswith("services.") and r.levelno >= logging.INFO]
    assert later == [], [r.getMessage() for r in later]  # retries are quiet
    [line] = messages(caplog, "cannot apply an event")
    assert getattr(line, "sequence", None) == seq and getattr(line, "shard", None) == SHARD
    assert bool(line.exc_info) == traceback
    assert [r for r in caplog.records if r.levelno >= logging.ERROR and r.name.startswith("services.")] == [
        line
    ]
    fix()
    await until(lambda: app.state.checkpoint(SHARD) == len(events), "the end of the stream")
    await until(lambda: not app.failures(), "the failure cleared")
    assert await health_of(ch) == SERVING
    assert gauge() == 0
    assert len(messages(caplog, "applied the event that could not be applied")) == 1
    assert app.state.snapshot() == straight(events).snapshot()


def test_a_bad_trade_stops_the_shard_reports_and_resumes_when_fixed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    events = Generator(seed=8, markets=MARKETS).run(800)
    i = next(i for i, e in enumerate(events) if i > 400 and e.WhichOneof("event") == "trade_executed")
    bad = ev.MatchingEvent()
    bad.CopyFrom(events[i])
    bad.trade_executed.price_ticks = 0  # would break K-lines and the ticker (open price 0)
    with FakeUpstreams(flow_of(events), per_response=50) as fakes:
        fakes.feeds[SHARD].events[i] = bad

        def fix() -> None:
            fakes.feeds[SHARD].events[i] = events[i]

        async def body(app: MarketDataApp, ch: Any) -> None:
            await stops_then_resumes(app, ch, fakes, events, events[i].sequence, fix, caplog, traceback=False)
            reason = messages(caplog, "cannot apply an event")[0].__dict__["reason"]
            assert "price and amount must be positive" in reason and "USDT" in reason

        with caplog.at_level(logging.INFO, logger="services.market"):
            run_market(fakes, tmp_path, body)


def test_an_error_while_applying_is_logged_once_and_retried_slowly(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    events = Generator(seed=9, markets=MARKETS).run(500)
    seq = events[300].sequence
    broken = {"on": True}
    with FakeUpstreams(flow_of(events), per_response=40) as fakes:

        def fix() -> None:
            broken["on"] = False

        def prepare(app: MarketDataApp) -> None:
            real = app.state._apply

            def apply(e: ev.MatchingEvent, changes: Any) -> None:
                if broken["on"] and e.sequence == seq:
                    raise KeyError("a bug")
                real(e, changes)

            app.state._apply = apply  # type: ignore[method-assign]

        async def body(app: MarketDataApp, ch: Any) -> None:
            await stops_then_resumes(app, ch, fakes, events, seq, fix, caplog, traceback=True)

        with caplog.at_level(logging.INFO, logger="services.market"):
            run_market(fakes, tmp_path, body, prepare)

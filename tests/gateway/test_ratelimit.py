"""Request weights per address and per API key: 429 with Retry-After and Binance's -1003, real processes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from services.gateway.ratelimit import ConnectionLimiter, WeightLimiter
from testkit.cluster import Cluster
from tests.gateway.conftest import Env

pytestmark = pytest.mark.slow


def test_limiter_windows_and_bounds() -> None:
    lim = WeightLimiter(10, max_clients=2)
    assert lim.take("a", 6, 1_000) is None and lim.take("a", 4, 2_000) is None
    assert lim.take("a", 1, 59_500) == 1  # half a second to the next window: 1 s
    assert lim.take("a", 1, 30_000) == 30 and lim.used("a") == 10  # refused weight is not counted
    assert lim.take("b", 10, 3_000) is None and lim.take("b", 11, 60_000) == 60
    assert lim.take("a", 10, 60_000) is None  # a new window
    lim.take("c", 1, 60_001)
    lim.take("d", 1, 60_002)  # past max_clients: one shared counter
    assert lim.used("\x00overflow") == 1


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    c = Cluster(
        Path(tmp_path_factory.mktemp("limited")),
        with_gateway=True,
        gateway_options={
            "weight_per_minute_ip": 100,
            "weight_per_minute_key": 10,
            "ws_connections_per_ip": 3,
            "ws_streams_per_connection": 4,
        },
    )
    c.start()
    try:
        yield Env(c)
    finally:
        c.stop()


def _in_one_window() -> None:
    """Start a burst early in a minute, so that it does not straddle two windows."""
    second = time.time() % 60
    if second > 50:
        time.sleep(61 - second)


def test_key_limit_counts_request_weights(limited: Env) -> None:  # first: the address limit is still free
    key, secret = limited.key(77)
    r = limited.rest(key, secret)
    # account weighs 20: more than the key's 10 per minute, refused before any service is called.
    heavy = r.signed("GET", "/api/v3/account")
    assert (heavy.status, heavy.body["code"]) == (429, -1003) and "Retry-After" in heavy.headers
    assert "API key" in heavy.body["msg"]


def test_address_limit_answers_429_with_retry_after(limited: Env) -> None:
    _in_one_window()
    r = limited.rest()
    used = int(r.get("/api/v3/ping").headers["X-MBX-USED-WEIGHT-1M"])  # the other test's weight too
    answers = [r.get("/api/v3/ping") for _ in range(100 - used)]
    assert all(a.status == 200 for a in answers)
    assert answers[-1].headers["X-MBX-USED-WEIGHT-1M"] == "100"
    refused = r.get("/api/v3/ping")
    assert (refused.status, refused.body["code"], refused.body["reason"]) == (429, -1003, "RATE_LIMITED")
    assert 1 <= int(refused.headers["Retry-After"]) <= 60


def test_connection_limiter_counts_per_address() -> None:
    lim = ConnectionLimiter(2)
    assert lim.acquire("a") and lim.acquire("a") and not lim.acquire("a")
    assert lim.acquire("b") and lim.open("a") == 2  # a refused connection is not counted
    lim.release("a")
    assert lim.acquire("a") and not lim.acquire("a")


def test_websocket_connections_per_address_are_limited(limited: Env) -> None:
    """[gateway] ws_connections_per_ip = 3: the 4th connection (any WebSocket endpoint) is closed at
    once with 1013 and the reason; once one closes, a new one is accepted."""
    base = limited.base.replace("http", "ws")

    async def run() -> None:
        async with aiohttp.ClientSession() as s:
            open_ = [await s.ws_connect(f"{base}{p}") for p in ("/ws", "/stream", "/ws-api/v3")]
            extra = await s.ws_connect(f"{base}/ws")
            msg = await extra.receive(timeout=5)
            assert msg.type == aiohttp.WSMsgType.CLOSE
            assert extra.close_code == 1013 and "too many connections" in str(msg.extra)
            assert "at most 3" in str(msg.extra)
            await open_[0].send_json({"method": "LIST_SUBSCRIPTIONS", "id": 1})  # the others still work
            assert (await open_[0].receive_json(timeout=5)) == {"result": [], "id": 1}
            await open_[0].close()
            await asyncio.sleep(0.2)
            again = await s.ws_connect(f"{base}/ws")
            await again.send_json({"method": "LIST_SUBSCRIPTIONS", "id": 2})
            assert (await again.receive_json(timeout=5)) == {"result": [], "id": 2}
            for ws in [*open_[1:], again]:
                await ws.close()

    asyncio.run(run())


def test_streams_per_connection_are_bounded(limited: Env) -> None:
    """[gateway] ws_streams_per_connection = 4: a SUBSCRIBE past it is refused with the bound, and the
    streams already subscribed stay."""
    base = limited.base.replace("http", "ws")
    four = [f"{s}@{k}" for s in ("btcusdt", "ethusdt") for k in ("trade", "ticker")]

    async def run() -> None:
        async with aiohttp.ClientSession() as s:
            ws = await s.ws_connect(f"{base}/ws")
            await ws.send_json({"method": "SUBSCRIBE", "params": four, "id": 1})
            assert (await ws.receive_json(timeout=10)) == {"result": None, "id": 1}
            await ws.send_json({"method": "SUBSCRIBE", "params": ["btcusdt@miniTicker"], "id": 2})
            refused = await ws.receive_json(timeout=10)
            assert refused["id"] == 2 and "at most 4 streams" in refused["error"]["msg"]
            await ws.send_json({"method": "LIST_SUBSCRIPTIONS", "id": 3})
            assert (await ws.receive_json(timeout=10)) == {"result": sorted(four), "id": 3}
            await ws.close()

    asyncio.run(run())

"""Request weights per address and per API key: 429 with Retry-After and Binance's -1003, real processes."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from services.gateway import shared
from services.gateway.ratelimit import OVERFLOW, ConnectionLimiter, WeightLimiter
from services.gateway.shared import SharedHandle, SharedState
from services.gateway.signing import ReplayGuard
from testkit.cluster import Cluster
from tests.gateway.conftest import Env

pytestmark = pytest.mark.slow


def _wait(answer: tuple[int | None, int]) -> int | None:
    return answer[0]


def test_limiter_windows_and_bounds() -> None:
    state = SharedState.local(replay_slots=1, weight_slots=2, connection_slots=1)  # room for 2 clients
    lim = WeightLimiter(10, state)
    assert lim.take("a", 6, 1_000) == (None, 6) and lim.take("a", 4, 2_000) == (None, 10)
    assert _wait(lim.take("a", 1, 59_500)) == 1  # half a second to the next window: 1 s
    assert _wait(lim.take("a", 1, 30_000)) == 30 and lim.used("a", 30_000) == 10  # refused: not counted
    assert _wait(lim.take("b", 10, 3_000)) is None and _wait(lim.take("b", 11, 60_000)) == 60
    assert _wait(lim.take("a", 10, 60_000)) is None  # a new window
    assert lim.used("a", 60_000) == 10 and lim.used("b", 60_000) == 0
    assert lim.take("b", 1, 60_000) == (None, 1)  # b's slot of the last window is reused
    other = WeightLimiter(10, state, per_key=True)  # the keys' table is another one
    assert other.used("a", 60_000) == 0 and other.take("a", 3, 60_000) == (None, 3)
    lim.take("c", 1, 60_001)  # a's and b's slots are this window's: c has no room, nor d
    lim.take("d", 1, 60_002)  # past the table's room: one shared counter
    assert lim.used(OVERFLOW, 60_002) == 2 and lim.used("c", 60_002) == 0


def test_limits_and_replays_hold_across_processes_sharing_the_state() -> None:
    """Two processes on one SharedState (as the gateway's workers): one limit, one replay memory."""
    state = SharedState.create()
    ctx = multiprocessing.get_context("spawn")
    results, go = ctx.Queue(), ctx.Queue()
    child = ctx.Process(target=_use_shared, args=(state.handle, results, go))
    child.start()
    try:
        assert results.get(timeout=30) == "ready"
        mine = WeightLimiter(10, state)
        guard = ReplayGuard(60_000, state)
        assert guard.first_time("POST /api/v3/order abc", 1_000)  # the child saw it: refused there
        assert mine.take("1.2.3.4", 6, 1_000) == (None, 6)
        go.put("go")
        assert results.get(timeout=30) == ("replayed", False, "weight", (None, 10), (1, 10))
        assert not guard.first_time("POST /api/v3/order child", 1_000)  # remembered by the child
        assert mine.used("1.2.3.4", 1_000) == 10
    finally:
        child.join(30)


def _use_shared(handle: SharedHandle, results: Any, go: Any) -> None:
    state = SharedState.attach(handle)
    lim = WeightLimiter(10, state)
    guard = ReplayGuard(60_000, state)
    results.put("ready")
    go.get(timeout=30)
    first = guard.first_time("POST /api/v3/order abc", 1_000)
    guard.first_time("POST /api/v3/order child", 1_000)
    results.put(("replayed", first, "weight", lim.take("1.2.3.4", 4, 1_500), lim.take("1.2.3.4", 1, 59_500)))


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


def test_connection_limiter_counts_per_address_over_every_worker() -> None:
    state = SharedState.local()
    lim = ConnectionLimiter(2, state)
    assert lim.acquire("a") and lim.acquire("a") and not lim.acquire("a")
    assert lim.acquire("b") and lim.open("a") == 2  # a refused connection is not counted
    lim.release("a")
    assert lim.acquire("a") and not lim.acquire("a")
    w0 = ConnectionLimiter(3, state, worker=0, workers=2)
    w1 = ConnectionLimiter(3, state, worker=1, workers=2)
    assert w0.acquire("c") and w1.acquire("c") and w1.acquire("c") and not w0.acquire("c")
    assert w0.open("c") == w1.open("c") == 3
    state.forget_worker(1)  # worker 1 restarted: its connections are gone
    assert w0.open("c") == 1 and w1.acquire("c")


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


def test_a_worker_killed_holding_the_shared_lock_does_not_stop_the_others(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(shared, "STALE_LOCK_S", 0.2)
    state = SharedState.create()
    ctx = multiprocessing.get_context("spawn")
    child = ctx.Process(target=_die_holding_the_lock, args=(state.handle,))
    child.start()
    child.join(30)
    assert child.exitcode == 0
    lim = WeightLimiter(10, state)
    started = time.monotonic()
    assert lim.take("a", 1, 1_000) == (None, 1)  # after the wait, not forever
    assert 0.15 < time.monotonic() - started < 5
    started = time.monotonic()
    assert lim.take("a", 1, 1_000) == (None, 2) and time.monotonic() - started < 0.1  # free again


def _die_holding_the_lock(handle: SharedHandle) -> None:
    handle.lock.acquire()
    os._exit(0)

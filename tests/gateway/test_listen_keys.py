"""The listenKey user data stream (POST / PUT / DELETE /api/v3/userDataStream, /ws/<listenKey>): the
store's expiry and bounds on their own, then against real processes: create, an executionReport of a
fill, keepalive, delete closes the socket, a revoked API key's listen key stops, unknown keys refused."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import sqlalchemy as sa
from exchange.v1 import gateway_service_pb2 as gpb

from services.gateway.errors import ApiError
from services.gateway.listenkeys import LISTEN_KEY_LEN, LISTEN_KEY_TTL_MS, PURGE_AFTER_MS, ListenKeys
from services.gateway.shared import SharedState
from tests.gateway.conftest import Env, Rest, new_user
from tests.gateway.test_ws import limit

PATH = "/api/v3/userDataStream"


def test_listen_keys_expire_without_keepalive_and_are_bounded(tmp_path: Path) -> None:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'keys.sqlite'}")
    state = SharedState.local()
    store = ListenKeys(engine, max_per_key=2, state=state)
    other_worker = ListenKeys(engine, max_per_key=2, state=state)  # the same database and state
    closed: list[str] = []
    a = store.create("K", 7, 0)
    assert len(a.listen_key) == LISTEN_KEY_LEN and a.listen_key.isalnum() and a.user_id == 7
    store.attach(a.listen_key, closed.append)
    b = other_worker.create("K", 7, 0)
    assert a.listen_key != b.listen_key and store.get(b.listen_key, 0) == b
    with pytest.raises(ApiError) as err:
        store.create("K", 7, 0)  # at most 2 per API key, through any worker
    assert err.value.body()["code"] == -1125
    store.create("OTHER", 8, 0)  # another API key has its own bound
    other_worker.keepalive("K", a.listen_key, LISTEN_KEY_TTL_MS - 1)  # a is valid until 2 x TTL - 1
    with pytest.raises(ApiError):
        store.keepalive("OTHER", a.listen_key, 1)  # only the owner's API key
    assert store.count(LISTEN_KEY_TTL_MS) == 1  # b and OTHER's expired
    assert store.sweep(LISTEN_KEY_TTL_MS, lambda _k: True) == 0 and not closed  # a's stream is alive
    assert store.get(b.listen_key, LISTEN_KEY_TTL_MS) is None
    assert store.get(a.listen_key, 2 * LISTEN_KEY_TTL_MS - 2) == a.__class__(
        a.listen_key, "K", 7, 2 * LISTEN_KEY_TTL_MS - 1
    )
    assert store.get(a.listen_key, 2 * LISTEN_KEY_TTL_MS - 1) is None  # expired, even before a sweep
    store.create("K", 7, LISTEN_KEY_TTL_MS)  # b's place is free again
    assert store.sweep(LISTEN_KEY_TTL_MS, lambda k: k != "K") == 1  # K revoked: a's stream closes
    assert closed == ["API key revoked"] and not store.streams
    c = store.create("OTHER", 8, 0)
    store.attach(c.listen_key, closed.append)
    assert not store.changed()
    other_worker.delete("OTHER", c.listen_key, 1)  # deleted through the other worker
    assert store.changed()  # what the sweeper polls: it sweeps at once
    assert store.sweep(1, lambda _k: True) == 1 and closed[-1] == "listen key deleted"
    assert store.get(c.listen_key, 1) is None and not store.changed()
    with pytest.raises(ApiError):
        store.delete("OTHER", c.listen_key, 1)
    d = store.create("OTHER", 8, 0)
    store.attach(d.listen_key, closed.append)
    assert store.sweep(LISTEN_KEY_TTL_MS, lambda _k: True) == 1 and closed[-1] == "listen key expired"
    store.sweep(LISTEN_KEY_TTL_MS + PURGE_AFTER_MS, lambda _k: True)  # purges what expired a minute ago
    assert store._row(d.listen_key) is None
    engine.dispose()


def _call(r: Rest, method: str, listen_key: str = "", key: str | None = None) -> Any:
    params = {"listenKey": listen_key} if listen_key else None
    return r.call(method, PATH, params, headers={"X-MBX-APIKEY": r.key if key is None else key})


async def _next_event(ws: aiohttp.ClientWebSocketResponse, check: Any, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        assert left > 0, "no matching event"
        msg = await ws.receive(timeout=left)
        assert msg.type == aiohttp.WSMsgType.TEXT, msg
        data = json.loads(msg.data)
        if check(data):
            return data


async def _closed(ws: aiohttp.ClientWebSocketResponse, timeout: float = 10.0) -> tuple[int | None, str]:
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        assert left > 0, "the stream was not closed"
        msg = await ws.receive(timeout=left)
        if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED):
            return ws.close_code, str(msg.extra or "")


def test_listen_key_stream_reports_a_fill_and_closes_when_deleted(env: Env) -> None:
    # ETH, not DOGE: a DOGE trade of this minute would be in the web page test's candles
    trader = env.trader(new_user(), USDT="50000", ETH="10")
    other = env.trader(new_user(), USDT="50000", ETH="10")
    created = _call(trader, "POST")
    assert created.status == 200 and set(created.body) == {"listenKey"}, created.body
    listen_key = created.body["listenKey"]
    base = env.base.replace("http", "ws")

    async def run() -> None:
        async with aiohttp.ClientSession() as s:
            ws = await s.ws_connect(f"{base}/ws/{listen_key}")
            await asyncio.sleep(0.5)  # the stream follows the user's events from now on
            order = await asyncio.to_thread(limit, trader, "SELL", "1", "3000", "ETHUSDT")
            new = await _next_event(
                ws, lambda d: d.get("e") == "executionReport" and d["i"] == order["orderId"]
            )
            assert (new["x"], new["X"], new["s"], new["S"]) == ("NEW", "NEW", "ETHUSDT", "SELL")
            await asyncio.to_thread(limit, other, "BUY", "1", "3000", "ETHUSDT")
            fill = await _next_event(ws, lambda d: d.get("e") == "executionReport" and d["x"] == "TRADE")
            assert (fill["i"], fill["X"], fill["l"], fill["L"], fill["z"]) == (
                order["orderId"],
                "FILLED",
                "1",
                "3000",
                "1",
            )
            position = await _next_event(ws, lambda d: d.get("e") == "outboundAccountPosition")
            assert {b["a"] for b in position["B"]} & {"ETH", "USDT"}
            assert _call(trader, "PUT", listen_key).status == 200  # keepalive
            assert _call(trader, "DELETE", listen_key).status == 200
            code, reason = await _closed(ws)
            assert (code, reason) == (1000, "listen key deleted")
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await s.ws_connect(f"{base}/ws/{listen_key}")  # a deleted key no longer streams
            assert refused.value.status == 400

    asyncio.run(run())
    gone = _call(trader, "PUT", listen_key)
    assert (gone.status, gone.body["code"]) == (400, -1125)


def test_a_revoked_api_keys_listen_key_stops(env: Env) -> None:
    trader = env.trader(new_user(), USDT="10")
    listen_key = _call(trader, "POST").body["listenKey"]
    base = env.base.replace("http", "ws")

    async def run() -> None:
        async with aiohttp.ClientSession() as s:
            ws = await s.ws_connect(f"{base}/ws/{listen_key}")
            env.admin().RevokeApiKey(gpb.RevokeApiKeyRequest(api_key=trader.key))
            code, reason = await _closed(ws)
            assert (code, reason) == (1000, "API key revoked")
            with pytest.raises(aiohttp.WSServerHandshakeError):
                await s.ws_connect(f"{base}/ws/{listen_key}")

    asyncio.run(run())
    refused = _call(trader, "PUT", listen_key)
    assert (refused.status, refused.body["code"]) == (401, -2015)


def test_unknown_listen_keys_and_api_keys_are_refused(env: Env) -> None:
    trader = env.trader(new_user(), USDT="10")
    unknown = "A" * LISTEN_KEY_LEN
    a = _call(trader, "PUT", unknown)
    assert (a.status, a.body["code"], a.body["reason"]) == (400, -1125, "INVALID_FIELD")
    assert _call(trader, "DELETE", "short").body["code"] == -1125
    assert _call(trader, "PUT").body["code"] == -1102  # no listenKey at all
    no_key = _call(trader, "POST", key="nope")
    assert (no_key.status, no_key.body["code"]) == (401, -2015)
    owner = env.trader(new_user(), USDT="10")
    theirs = _call(owner, "POST").body["listenKey"]
    assert _call(trader, "DELETE", theirs).body["code"] == -1125  # another key's listen key
    base = env.base.replace("http", "ws")

    async def run() -> None:
        async with aiohttp.ClientSession() as s:
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await s.ws_connect(f"{base}/ws/{unknown}")
            assert refused.value.status == 400

    asyncio.run(run())

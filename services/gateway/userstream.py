"""The handlers of the listenKey user data stream (services.gateway.listenkeys): POST / PUT / DELETE
/api/v3/userDataStream with X-MBX-APIKEY (a key with the read permission; no signature, as Binance), and
the stream `/ws/<listenKey>`, which sends the raw executionReport and outboundAccountPosition events of
the key's user (services.gateway.userdata) and is closed (code 1000 and the reason) when its listen key
is deleted, expires or loses its API key. An unknown or expired listen key is answered HTTP 400
{code: -1125} and no socket."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from aiohttp import web

from services.common.errors import Reason
from services.gateway.context import Gateway, gateway_of, json_response, now_ms
from services.gateway.errors import MANDATORY_PARAM, ApiError
from services.gateway.keys import READ
from services.gateway.listenkeys import (
    INVALID_LISTEN_KEY,
    LISTEN_KEY_LEN,
    LISTEN_KEY_PATTERN,
    ListenKeys,
)
from services.gateway.signing import key_of
from services.gateway.userdata import follow_user
from services.gateway.ws import HEARTBEAT_S, Connection

log = logging.getLogger("services.gateway.userstream")

LISTEN_KEYS: web.AppKey[ListenKeys] = web.AppKey("listen_keys", ListenKeys)
SWEEP_S = 1.0
VERSION_POLL_S = 0.05
PATH = "/api/v3/userDataStream"


def valid_api_key(gw: Gateway) -> Any:
    def check(api_key: str) -> bool:
        active = gw.keys.active(api_key)
        return active is not None and READ in active.key.permissions

    return check


def _api_key(request: web.Request) -> tuple[Gateway, ListenKeys, str, int]:
    gw = gateway_of(request)
    active = key_of(gw.keys, request.headers.get("X-MBX-APIKEY"))
    if READ not in active.key.permissions:
        raise ApiError(
            401,
            -2015,
            "This API key does not have the 'read' permission.",
            reason=str(Reason.KEY_PERMISSION_DENIED),
        )
    return gw, request.app[LISTEN_KEYS], active.key.api_key, active.key.user_id


async def _listen_key_param(request: web.Request) -> str:
    value = request.query.get("listenKey", "")
    if not value and request.can_read_body:
        body = await request.post()
        value = str(body.get("listenKey", ""))
    if not value:
        raise ApiError(
            400,
            MANDATORY_PARAM,
            "Mandatory parameter 'listenKey' was not sent, was empty/null, or malformed.",
            reason=str(Reason.INVALID_FIELD),
        )
    if len(value) != LISTEN_KEY_LEN:
        raise ApiError(
            400, INVALID_LISTEN_KEY, "This listenKey does not exist.", reason=str(Reason.INVALID_FIELD)
        )
    return value


async def create(request: web.Request) -> web.Response:
    _, store, api_key, user_id = _api_key(request)
    entry = await asyncio.to_thread(store.create, api_key, user_id, now_ms())
    return json_response({"listenKey": entry.listen_key})


async def keepalive(request: web.Request) -> web.Response:
    _, store, api_key, _ = _api_key(request)
    listen_key = await _listen_key_param(request)
    await asyncio.to_thread(store.keepalive, api_key, listen_key, now_ms())
    return json_response({})


async def delete(request: web.Request) -> web.Response:
    _, store, api_key, _ = _api_key(request)
    listen_key = await _listen_key_param(request)
    await asyncio.to_thread(store.remove, api_key, listen_key, now_ms())
    store.close([(listen_key, "listen key deleted")])
    return json_response({})


async def stream(request: web.Request) -> web.WebSocketResponse:
    gw = gateway_of(request)
    store = request.app[LISTEN_KEYS]
    entry = await asyncio.to_thread(store.get, request.match_info["listen_key"], now_ms())
    if entry is None or not valid_api_key(gw)(entry.api_key):
        raise ApiError(
            400, INVALID_LISTEN_KEY, "This listenKey does not exist.", reason=str(Reason.INVALID_FIELD)
        )
    ws = web.WebSocketResponse(heartbeat=HEARTBEAT_S, max_msg_size=64 * 1024)
    await ws.prepare(request)
    conn = Connection(ws, combined=False, buffer=gw.config.ws_buffer)

    def close(reason: str) -> None:
        conn.drop(reason, code=1000)

    store.attach(entry.listen_key, close)
    loop = asyncio.get_running_loop()
    tasks = [loop.create_task(conn.writer()), loop.create_task(follow_user(gw, conn, entry.user_id, dict))]
    try:
        async for _ in ws:  # nothing to answer: Binance's stream ignores what clients send
            pass
    finally:
        conn.closed = True
        store.detach(entry.listen_key, close)
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
    return ws


async def sweeper(app: web.Application, gw: Gateway) -> None:
    """Every SWEEP_S, and at once when a listen key was deleted through another worker or an API key
    changed: close this worker's streams of expired, deleted or orphaned listen keys."""
    store = app[LISTEN_KEYS]
    check = valid_api_key(gw)
    next_sweep = 0.0
    loop = asyncio.get_running_loop()
    while True:
        await asyncio.sleep(VERSION_POLL_S)
        if gw.keys.stale():
            await gw.keys.sync()
        elif not store.changed() and loop.time() < next_sweep:
            continue
        next_sweep = loop.time() + SWEEP_S
        try:
            store.close(await asyncio.to_thread(store.dead, now_ms(), check, list(store.streams)))
        except Exception:
            log.exception("sweeping the listen keys failed")


def routes() -> list[web.RouteDef]:
    """Before services.gateway.ws's routes: `/ws/<listenKey>` is matched ahead of `/ws/<streams>`."""
    return [
        web.post(PATH, create),
        web.put(PATH, keepalive),
        web.delete(PATH, delete),
        web.get(f"/ws/{{listen_key:{LISTEN_KEY_PATTERN}}}", stream),
    ]

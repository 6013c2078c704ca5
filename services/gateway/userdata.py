"""The user data stream over Binance's WebSocket API (`/ws-api/v3`), as ccxt.pro uses it for spot:

    -> {"id": "1", "method": "userDataStream.subscribe.signature",
        "params": {"apiKey": KEY, "timestamp": MS, "signature": HEX}}
    <- {"id": "1", "status": 200, "result": {"subscriptionId": 0}}
    <- {"subscriptionId": 0, "event": {"e": "executionReport", ...}}         # order updates, fills
    <- {"subscriptionId": 0, "event": {"e": "outboundAccountPosition", ...}} # balances that changed

The signature is HMAC-SHA256 of the parameters other than `signature`, sorted by name, as
`name=value&...`; timestamp / recvWindow and replays are checked as for REST (services.gateway.signing);
the key needs the read permission. Events come from accounts' StreamUserEvents of the key's user (from
now on), with integers turned into decimals by the market specs. Also `ping` and `time`. The same
bounded per-connection queue as the market streams: a slow consumer is closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from typing import Any

from aiohttp import WSMsgType, web
from exchange.v1 import accounts_service_pb2 as apb
from exchange.v1 import events_pb2 as ev

from services.clients.errors import ClientError
from services.common import enums
from services.common.markets import MarketCatalog
from services.gateway import formats
from services.gateway.context import Gateway, now_ms
from services.gateway.errors import ApiError
from services.gateway.keys import READ
from services.gateway.symbols import binance_symbol
from services.gateway.ws import HEARTBEAT_S, Connection

log = logging.getLogger("services.gateway.userdata")

MAX_SUBSCRIPTIONS = 5  # user data subscriptions (keys) per connection

EXEC_TYPES = {
    enums.FILLED: "TRADE",
    enums.CANCELED: "CANCELED",
    enums.EXPIRED: "EXPIRED",
    enums.REJECTED: "REJECTED",
}


def signed_payload(params: dict[str, Any]) -> str:
    return "&".join(f"{k}={params[k]}" for k in sorted(params) if k != "signature")


class UserEvents:
    """Accounts events of one user as Binance user-data events."""

    def __init__(self, catalog: MarketCatalog) -> None:
        self.catalog = catalog
        self.fills: dict[int, ev.UserFill] = {}
        self.announced: set[int] = set()  # open orders already reported NEW

    def convert(self, events: list[ev.AccountEvent]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        balances: dict[str, dict[str, str]] = {}
        for e in events:
            kind = e.WhichOneof("event")
            if kind == "user_fill":
                self.fills[e.user_fill.order_id] = e.user_fill
            elif kind == "order_updated":
                report = self.execution_report(e.order_updated, e.time_us)
                if report is not None:
                    out.append(report)
            elif kind == "balance_changed":
                b = e.balance_changed
                asset = self.catalog.assets.get(b.asset)
                if asset is not None:
                    balances[b.asset] = {
                        "a": b.asset,
                        "f": asset.format(b.available),
                        "l": asset.format(b.frozen),
                    }
        if balances:
            last = events[-1].time_us // 1000
            out.append(
                {"e": "outboundAccountPosition", "E": now_ms(), "u": last, "B": list(balances.values())}
            )
        return out

    def execution_report(self, o: ev.OrderState, time_us: int) -> dict[str, Any] | None:
        spec = self.catalog.markets.get(o.market)
        if spec is None:
            return None
        fill = self.fills.pop(o.order_id, None)
        live = o.status in (enums.PENDING, enums.OPEN, enums.PARTIALLY_FILLED)
        if fill is not None:
            exec_type = "TRADE"
        elif live:
            if o.order_id in self.announced:
                return None  # e.g. PENDING -> OPEN: nothing Binance reports
            exec_type = "NEW"
        else:
            exec_type = EXEC_TYPES.get(o.status, "CANCELED")
        if live:
            self.announced.add(o.order_id)
        else:
            self.announced.discard(o.order_id)
        as_order = formats.order_json_from_state(spec, o)
        status = as_order["status"]
        if status in ("EXPIRED", "EXPIRED_IN_MATCH") and exec_type == "CANCELED":
            exec_type = "EXPIRED"
        last_qty = last_price = last_quote = fee = "0"
        fee_asset = None
        trade_id = -1
        maker = False
        if fill is not None:
            last_qty = spec.format_amount(fill.amount_lots)
            last_price = spec.format_price(fill.price_ticks)
            last_quote = spec.format_quote(fill.quote_units)
            asset = self.catalog.assets.get(fill.fee_asset)
            fee = asset.format(fill.fee_units) if asset is not None else "0"
            fee_asset = fill.fee_asset or None
            trade_id = fill.trade_id
            maker = fill.role == enums.MAKER
        return {
            "e": "executionReport",
            "E": now_ms(),
            "s": binance_symbol(o.market),
            "c": as_order["clientOrderId"],
            "S": as_order["side"],
            "o": as_order["type"],
            "f": as_order["timeInForce"],
            "q": as_order["origQty"],
            "p": as_order["price"],
            "P": "0",
            "F": "0",
            "g": -1,
            "C": "",
            "x": exec_type,
            "X": status,
            "r": "NONE",
            "i": o.order_id,
            "l": last_qty,
            "z": as_order["executedQty"],
            "L": last_price,
            "n": fee,
            "N": fee_asset,
            "T": time_us // 1000,
            "t": trade_id,
            "w": as_order["isWorking"],
            "m": maker,
            "M": False,
            "O": o.created_time_us // 1000,
            "Z": as_order["cummulativeQuoteQty"],
            "Y": last_quote,
            "Q": as_order["origQuoteOrderQty"],
            "W": o.created_time_us // 1000,
            "V": as_order["selfTradePreventionMode"],
        }


async def serve(request: web.Request, gw: Gateway, buffer: int) -> web.WebSocketResponse:
    ws = web.WebSocketResponse(heartbeat=HEARTBEAT_S, max_msg_size=64 * 1024)
    await ws.prepare(request)
    conn = Connection(ws, combined=False, buffer=buffer)
    writer = asyncio.get_running_loop().create_task(conn.writer())
    followers: list[asyncio.Task[None]] = []
    try:
        async for msg in ws:
            if msg.type != WSMsgType.TEXT:
                continue
            try:
                req = json.loads(msg.data)
            except ValueError:
                conn.send_json({"id": None, "status": 400, "error": {"code": -1100, "msg": "Invalid JSON"}})
                continue
            if not isinstance(req, dict):
                continue
            rid, method, params = req.get("id"), req.get("method"), req.get("params") or {}
            if method == "ping":
                conn.send_json({"id": rid, "status": 200, "result": {}})
            elif method == "time":
                conn.send_json({"id": rid, "status": 200, "result": {"serverTime": now_ms()}})
            elif method == "userDataStream.subscribe.signature" and isinstance(params, dict):
                if len(followers) >= MAX_SUBSCRIPTIONS:
                    conn.send_json(
                        {
                            "id": rid,
                            "status": 400,
                            "error": {
                                "code": -1100,
                                "msg": f"At most {MAX_SUBSCRIPTIONS} subscriptions per connection.",
                            },
                        }
                    )
                    continue
                try:
                    text = {str(k): str(v) for k, v in params.items()}
                    signed = f"{signed_payload(text)}&signature={text.get('signature', '')}"
                    verified = gw.verifier.verify(
                        text.get("apiKey"), signed, "", text, endpoint="WS userDataStream.subscribe"
                    )
                    if READ not in verified.key.key.permissions:
                        raise ApiError(
                            401,
                            -2015,
                            "This API key does not have the 'read' permission.",
                            reason="KEY_PERMISSION_DENIED",
                        )
                except ApiError as err:
                    conn.send_json({"id": rid, "status": err.status, "error": err.body()})
                    continue
                sid = len(followers)
                followers.append(
                    asyncio.get_running_loop().create_task(_follow(gw, conn, verified.user_id, sid))
                )
                conn.send_json({"id": rid, "status": 200, "result": {"subscriptionId": sid}})
            else:
                conn.send_json({"id": rid, "status": 400, "error": {"code": -1100, "msg": "Unknown method."}})
    finally:
        conn.closed = True
        for t in [*followers, writer]:
            t.cancel()
        for t in [*followers, writer]:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
    return ws


async def _follow(gw: Gateway, conn: Connection, user_id: int, sid: int) -> None:
    await follow_user(gw, conn, user_id, lambda event: {"subscriptionId": sid, "event": event})


async def follow_user(
    gw: Gateway, conn: Connection, user_id: int, wrap: Callable[[dict[str, Any]], Any]
) -> None:
    """Send the user's events (from now on) to `conn`, each as `wrap(event)`, until it closes."""
    events = UserEvents(gw.symbols.catalog)
    after = 0
    while not conn.closed:
        try:
            stream = gw.accounts.stream_user_events(
                apb.StreamUserEventsRequest(user_id=user_id, from_sequence=after)
            )
            async for resp in stream:
                if resp.events:
                    after = resp.events[-1].sequence + 1
                for event in events.convert(list(resp.events)):
                    conn.send_json(wrap(event))
        except ClientError as err:
            log.warning("user events stream failed", extra={"user": user_id, "error": str(err)})
        await asyncio.sleep(1.0)


def routes(gw: Gateway, buffer: int) -> list[web.RouteDef]:
    async def handler(request: web.Request) -> web.WebSocketResponse:
        return await serve(request, gw, buffer)

    return [web.get("/ws-api/v3", handler)]

"""WebSocket market streams, Binance-shaped: `/ws` (raw payloads) and `/stream?streams=a/b` (combined:
`{"stream": name, "data": payload}`), also `/ws/<name>/<name>` with streams in the path. Streams:

    <symbol>@trade  <symbol>@aggTrade  <symbol>@depth  <symbol>@depth@100ms  <symbol>@kline_<interval>
    <symbol>@ticker  <symbol>@miniTicker  <symbol>@bookTicker

(symbols lower case, as Binance's). Messages `{"method": "SUBSCRIBE" | "UNSUBSCRIBE" |
"LIST_SUBSCRIPTIONS", "params": [...], "id": n}` are answered `{"result": null, "id": n}` (or a list, or
`{"error": {"code", "msg"}, "id"}`). The server pings every 20 s (aiohttp heartbeat); a client that does
not answer is closed; client pings are answered with pongs.

Depth diffs: one subscription per market to the market service's depth (up to DEPTH_LEVELS levels per
side, each view with its sequence), opened with the first depth subscriber of the market; SUBSCRIBE is
answered (and a connection with depth streams in its URL accepted) once the first view is in: the diffs
start from it. Every 100 ms (or 1000 ms for `@depth`) the stream sends what changed since its last
message: U = the previous message's u + 1, u = the sequence of the view it describes, and the levels
that changed (amount "0": removed). The REST depth's lastUpdateId is the same sequence, so a client that
subscribes, then takes a snapshot and applies the diffs with u > lastUpdateId (the first one has U <=
lastUpdateId + 1) keeps an exact book, as on Binance.

Fan-out: a message is serialized and framed once per kind (raw, combined), not per connection; what is
published in one turn of the event loop is flushed together (flushes at least FLUSH_INTERVAL_S apart,
more under load: FLUSH_COST_FACTOR times the last flush's cost, at most MAX_FLUSH_INTERVAL_S),
each connection getting one transport write of the frames of its streams, joined once per set of
subscriptions, with no task or await per connection and message (Feeds.flush, Connection.send_frame).
Depth diffs are computed once per market and period, for every subscriber.

Bounded: while a connection's socket holds more than WRITE_HIGH_WATER bytes, its messages wait in its
backlog, at most `ws_buffer` of them; one more means a slow consumer, which is closed (code 1008, reason
"slow consumer: ...") without slowing anyone else; at most MAX_STREAMS streams per connection.
Upstream subscriptions start with the first subscriber of a market's feed and stop after its last one
left; a broken one is re-opened after a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web
from exchange.v1 import market_service_pb2 as kpb

from services.clients.errors import ClientError
from services.clients.market import MarketClient
from services.common import enums
from services.common.errors import Reason
from services.common.markets import MarketSpec
from services.gateway import formats
from services.gateway.context import now_ms
from services.gateway.errors import ILLEGAL_CHARS, ApiError
from services.gateway.symbols import Symbols, binance_symbol

log = logging.getLogger("services.gateway.ws")

DEPTH_LEVELS = 1000
MAX_STREAMS = 200
HEARTBEAT_S = 20.0
RETRY_S = 1.0
DEPTH_PERIODS_MS = {"depth": 1000, "depth@100ms": 100}
READY_TIMEOUT_S = 10.0


WRITE_HIGH_WATER = 256 * 1024  # bytes in a connection's socket buffer before its messages wait
BACKLOG_POLL_S = 0.005
FLUSH_INTERVAL_S = 0.005  # between two fan-out flushes: at most 200 writes/s per connection
# A flush's cost is about one socket write per connection, whatever the messages: the next flush waits
# FLUSH_COST_FACTOR times as long as the last one took (at least FLUSH_INTERVAL_S, at most
# MAX_FLUSH_INTERVAL_S), so that the fan-out takes at most about 1 / FLUSH_COST_FACTOR of the process
# however many connections there are, and the messages of busy streams go out in fewer, larger writes.
FLUSH_COST_FACTOR = 4.0
MAX_FLUSH_INTERVAL_S = 0.04


def text_frame(text: str) -> bytes:
    """A server's (unmasked, uncompressed) WebSocket text frame: the same bytes for every connection, so
    a fanned-out message is framed once. Valid beside permessage-deflate too (RSV1 unset: uncompressed)."""
    data = text.encode()
    n = len(data)
    if n < 126:
        header = bytes((0x81, n))
    elif n < 65536:
        header = struct.pack("!BBH", 0x81, 126, n)
    else:
        header = struct.pack("!BBQ", 0x81, 127, n)
    return header + data


class Connection:
    """A WebSocket connection's writes: a message is a frame built once (text_frame) and written straight
    to the connection's transport, without a task or an await per message, while the socket keeps up.
    Once more than WRITE_HIGH_WATER bytes wait in the socket buffer (or before the socket is open), the
    frames wait in the connection's backlog, which its writer task (`writer()`) writes out as the socket
    drains; more than `buffer` messages waiting there and the connection is dropped as a slow consumer."""

    def __init__(self, ws: web.WebSocketResponse, *, combined: bool, buffer: int) -> None:
        self.ws = ws
        self.combined = combined
        self.buffer = buffer
        self.streams: set[str] = set()
        self.closed = False
        self.dropped_reason = ""
        self.backlog: list[bytes] = []
        self.backlog_messages = 0
        self._backlogged = asyncio.Event()
        self._transport: Any = None

    def offer(self, stream: str, payload: dict[str, Any]) -> None:
        if self.closed:
            return
        data = {"stream": stream, "data": payload} if self.combined else payload
        self.send_json(data)

    def send_json(self, data: Any) -> None:
        if not self.closed:
            self.send_frame(text_frame(json.dumps(data, separators=(",", ":"))))

    def transport(self) -> Any:
        """The socket's transport once the WebSocket is open (aiohttp's WebSocketWriter holds it)."""
        if self._transport is None:
            writer = getattr(self.ws, "_writer", None)
            self._transport = getattr(writer, "transport", None)
        return self._transport

    def send_frame(self, frame: bytes, messages: int = 1) -> None:
        """Write `frame` (whole frames: `messages` of them) now, or keep it in the backlog."""
        if self.closed:
            return
        if not self.backlog:
            transport = self._transport or self.transport()
            if transport is not None and transport.get_write_buffer_size() <= WRITE_HIGH_WATER:
                if not transport.is_closing():
                    transport.write(frame)
                return  # a closing socket takes nothing more (nothing after a close frame)
        self.backlog.append(frame)
        self.backlog_messages += messages
        if self.backlog_messages > self.buffer:
            self.drop(f"slow consumer: more than {self.buffer} messages waiting")
        else:
            self._backlogged.set()

    def drop(self, reason: str, code: int = 1008) -> None:
        if not self.closed:
            self.closed = True
            self.dropped_reason = reason
            self.backlog.clear()
            self.backlog_messages = 0
            asyncio.get_running_loop().create_task(self.ws.close(code=code, message=reason[:120].encode()))

    async def writer(self) -> None:
        """Writes out the backlog as the socket drains (polled: a backlog is rare and short-lived)."""
        while not self.closed:
            await self._backlogged.wait()
            while self.backlog and not self.closed:
                transport = self.transport()
                if transport is not None and transport.is_closing():
                    self.backlog.clear()
                    self.backlog_messages = 0
                elif transport is not None and transport.get_write_buffer_size() <= WRITE_HIGH_WATER:
                    data = b"".join(self.backlog)
                    self.backlog.clear()
                    self.backlog_messages = 0
                    transport.write(data)
                else:
                    await asyncio.sleep(BACKLOG_POLL_S)
            self._backlogged.clear()


@dataclass
class DepthBook:
    """The latest depth view of a market and, per depth stream period, what was last sent."""

    seq: int = 0
    ready: asyncio.Event = field(default_factory=asyncio.Event)  # the first view arrived
    bids: dict[str, str] = field(default_factory=dict)
    asks: dict[str, str] = field(default_factory=dict)
    sent: dict[int, tuple[int, dict[str, str], dict[str, str]]] = field(default_factory=dict)
    best: tuple[str, str, str, str] = ("", "", "", "")


def _diff(old: dict[str, str], new: dict[str, str]) -> list[list[str]]:
    out = [[p, q] for p, q in new.items() if old.get(p) != q]
    out.extend([p, "0"] for p in old if p not in new)
    return out


class Feeds:
    """The upstream market-data subscriptions and the fan-out to connections."""

    def __init__(self, market: MarketClient, symbols: Symbols, *, max_streams: int = MAX_STREAMS) -> None:
        self.market = market
        self.max_streams = max_streams
        self.symbols = symbols
        self.subscribers: dict[str, set[Connection]] = {}
        self.upstreams: dict[tuple[str, ...], asyncio.Task[None]] = {}
        self.books: dict[str, DepthBook] = {}
        self.last_trade: dict[str, int] = {}
        self.connections: set[Connection] = set()
        self._tick: list[tuple[str, dict[str, Any]]] = []  # published, not yet flushed
        self._flush_scheduled = False
        self._last_flush = 0.0
        self.flush_interval = FLUSH_INTERVAL_S  # adapted to the cost of the last flush

    # --- names -----------------------------------------------------------------------------------

    def parse(self, name: str) -> tuple[MarketSpec, str, tuple[str, ...]]:
        """(market, kind, upstream key) of a stream name; ValueError for one that does not exist."""
        symbol, _, kind = name.partition("@")
        spec = self.symbols.by_symbol.get(symbol.upper())
        if spec is None or symbol != symbol.lower():
            raise ValueError(f"unknown symbol in {name[:40]!r}")
        if kind in ("trade", "aggTrade"):
            return spec, kind, ("trades", spec.symbol)
        if kind in DEPTH_PERIODS_MS or kind == "bookTicker":
            return spec, kind, ("depth", spec.symbol)
        if kind in ("ticker", "miniTicker"):
            return spec, kind, ("ticker", spec.symbol)
        if kind.startswith("kline_") and kind[6:] in formats.KLINE_INTERVALS:
            return spec, kind, ("kline", spec.symbol, kind[6:])
        raise ValueError(f"unknown stream {name[:40]!r}")

    async def subscribe(self, conn: Connection, name: str) -> None:
        """Add a stream to a connection. A depth stream is answered once its market's first view is in:
        the diffs then start from a view older than any REST snapshot taken after the answer."""
        _, _, key = self.parse(name)
        if name in conn.streams:
            return
        if len(conn.streams) >= self.max_streams:
            raise ValueError(f"at most {self.max_streams} streams per connection")
        conn.streams.add(name)
        self.subscribers.setdefault(name, set()).add(conn)
        if key not in self.upstreams:
            if key[0] == "depth":
                self.books[key[1]] = DepthBook()
            self.upstreams[key] = asyncio.get_running_loop().create_task(self._upstream(key), name=str(key))
        if key[0] == "depth":
            try:
                await asyncio.wait_for(self.books[key[1]].ready.wait(), READY_TIMEOUT_S)
            except TimeoutError:
                self.unsubscribe(conn, name)
                raise ValueError(f"no depth of {key[1]} from the market service; try again") from None

    def unsubscribe(self, conn: Connection, name: str) -> None:
        conn.streams.discard(name)
        subs = self.subscribers.get(name)
        if subs is not None:
            subs.discard(conn)
            if not subs:
                del self.subscribers[name]
        self._stop_unused()

    def leave(self, conn: Connection) -> None:
        for name in list(conn.streams):
            self.unsubscribe(conn, name)

    def _stop_unused(self) -> None:
        used = {self.parse(n)[2] for n in self.subscribers}
        for key in [k for k in self.upstreams if k not in used]:
            self.upstreams.pop(key).cancel()
            if key[0] == "depth":
                self.books.pop(key[1], None)

    async def close(self) -> None:
        for conn in list(self.connections):
            conn.closed = True
            with contextlib.suppress(Exception):
                await conn.ws.close(code=1001, message=b"server shutting down")
        tasks = list(self.upstreams.values())
        self.upstreams.clear()
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t

    def publish(self, name: str, payload: dict[str, Any]) -> None:
        """Queue a message for the stream's subscribers: what is published in one turn of the event loop
        goes out together at its end (flush), and flushes are at least FLUSH_INTERVAL_S apart, so that
        under load each connection gets fewer, larger writes (and its client fewer wakeups)."""
        if name not in self.subscribers:
            return
        self._tick.append((name, payload))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            loop = asyncio.get_running_loop()
            wait = self._last_flush + self.flush_interval - loop.time()
            if wait > 0:
                loop.call_later(wait, self.flush)
            else:
                loop.call_soon(self.flush)

    def flush(self) -> None:
        """Write what was published since the last flush. Each message is serialized and framed once
        (raw and, for combined streams, wrapped); the frames a connection gets are joined once per set of
        messages and kind, so connections with the same subscriptions share the bytes, and each connection
        gets one write (Connection.send_frame) for all of them, in publishing order."""
        self._flush_scheduled = False
        self._last_flush = asyncio.get_running_loop().time()
        tick, self._tick = self._tick, []
        if not tick:
            return
        started = time.perf_counter()
        try:
            self._write(tick)
        finally:
            cost = time.perf_counter() - started
            self.flush_interval = min(MAX_FLUSH_INTERVAL_S, max(FLUSH_INTERVAL_S, FLUSH_COST_FACTOR * cost))

    def _write(self, tick: list[tuple[str, dict[str, Any]]]) -> None:
        frames: dict[tuple[int, bool], bytes] = {}

        def frame(i: int, combined: bool) -> bytes:
            f = frames.get((i, combined))
            if f is None:
                name, payload = tick[i]
                data = {"stream": name, "data": payload} if combined else payload
                f = frames[(i, combined)] = text_frame(json.dumps(data, separators=(",", ":")))
            return f

        if len(tick) == 1:
            for conn in list(self.subscribers.get(tick[0][0], ())):
                conn.send_frame(frame(0, conn.combined))
            return
        per_conn: dict[Connection, list[int]] = {}
        for i, (name, _) in enumerate(tick):
            for conn in self.subscribers.get(name, ()):
                got = per_conn.get(conn)
                if got is None:
                    per_conn[conn] = [i]
                else:
                    got.append(i)
        joined: dict[tuple[bool, tuple[int, ...]], bytes] = {}
        for conn, indices in per_conn.items():
            key = (conn.combined, tuple(indices))
            data = joined.get(key)
            if data is None:
                data = joined[key] = b"".join([frame(i, conn.combined) for i in indices])
            conn.send_frame(data, len(indices))

    # --- upstreams -------------------------------------------------------------------------------

    async def _upstream(self, key: tuple[str, ...]) -> None:
        runner: Callable[[], Any] = {
            "trades": lambda: self._trades(key[1]),
            "depth": lambda: self._depth(key[1]),
            "ticker": lambda: self._ticker(key[1]),
            "kline": lambda: self._kline(key[1], key[2]),
        }[key[0]]
        while True:
            try:
                await runner()
            except ClientError as err:
                log.warning("market stream failed", extra={"stream": str(key), "error": str(err)})
            await asyncio.sleep(RETRY_S)

    async def _trades(self, market: str) -> None:
        sym = binance_symbol(market)
        first = market not in self.last_trade
        async for resp in self.market.subscribe_trades(kpb.SubscribeTradesRequest(market=market)):
            last = self.last_trade.get(market, 0)
            new = [t for t in resp.trades if t.trade_id > last]
            if new:
                self.last_trade[market] = new[-1].trade_id
            if first:  # the recent trades that open a subscription: already history
                first = False
                continue
            lower = sym.lower()
            for t in new:
                when = formats.ms(t.time_us)
                maker = t.taker_side == enums.SELL
                self.publish(
                    f"{lower}@trade",
                    {
                        "e": "trade",
                        "E": now_ms(),
                        "s": sym,
                        "t": t.trade_id,
                        "p": t.price,
                        "q": t.amount,
                        "T": when,
                        "m": maker,
                        "M": True,
                    },
                )
                self.publish(
                    f"{lower}@aggTrade",
                    {
                        "e": "aggTrade",
                        "E": now_ms(),
                        "s": sym,
                        "a": t.trade_id,
                        "p": t.price,
                        "q": t.amount,
                        "f": t.trade_id,
                        "l": t.trade_id,
                        "T": when,
                        "m": maker,
                        "M": True,
                    },
                )

    async def _depth(self, market: str) -> None:
        book = self.books[market]
        lower = binance_symbol(market).lower()
        timers = [
            asyncio.get_running_loop().create_task(self._depth_timer(market, lower, kind, period))
            for kind, period in DEPTH_PERIODS_MS.items()
        ]
        try:
            stream = self.market.subscribe_depth(kpb.SubscribeDepthRequest(market=market, limit=DEPTH_LEVELS))
            async for resp in stream:
                book.bids = {lv.price: lv.amount for lv in resp.bids}
                book.asks = {lv.price: lv.amount for lv in resp.asks}
                book.seq = resp.sequence
                if not book.ready.is_set():  # the base every depth stream's first diff starts from
                    for period in DEPTH_PERIODS_MS.values():
                        book.sent[period] = (book.seq, dict(book.bids), dict(book.asks))
                    book.ready.set()
                bid = resp.bids[0] if resp.bids else None
                ask = resp.asks[0] if resp.asks else None
                best = (
                    bid.price if bid else "0",
                    bid.amount if bid else "0",
                    ask.price if ask else "0",
                    ask.amount if ask else "0",
                )
                if best != book.best:
                    book.best = best
                    self.publish(
                        f"{lower}@bookTicker",
                        {
                            "u": resp.sequence,
                            "s": lower.upper(),
                            "b": best[0],
                            "B": best[1],
                            "a": best[2],
                            "A": best[3],
                        },
                    )
        finally:
            for t in timers:
                t.cancel()

    async def _depth_timer(self, market: str, lower: str, kind: str, period_ms: int) -> None:
        name = f"{lower}@{kind}"
        book = self.books[market]
        while True:
            await asyncio.sleep(period_ms / 1000)
            last = book.sent.get(period_ms)
            if last is None or last[0] == book.seq:
                continue
            prev_seq, prev_bids, prev_asks = last
            bids, asks = dict(book.bids), dict(book.asks)
            book.sent[period_ms] = (book.seq, bids, asks)
            self.publish(
                name,
                {
                    "e": "depthUpdate",
                    "E": now_ms(),
                    "s": lower.upper(),
                    "U": prev_seq + 1,
                    "u": book.seq,
                    "b": _diff(prev_bids, bids),
                    "a": _diff(prev_asks, asks),
                },
            )

    async def _ticker(self, market: str) -> None:
        spec = self.symbols.catalog.market(market)
        lower = binance_symbol(market).lower()
        async for resp in self.market.subscribe_ticker(kpb.SubscribeTickerRequest(market=market)):
            t = formats.ticker_json(spec, resp.ticker)
            now = now_ms()
            self.publish(
                f"{lower}@ticker",
                {
                    "e": "24hrTicker",
                    "E": now,
                    "s": t["symbol"],
                    "p": t["priceChange"],
                    "P": t["priceChangePercent"],
                    "w": t["weightedAvgPrice"],
                    "x": t["prevClosePrice"],
                    "c": t["lastPrice"],
                    "Q": "0",
                    "b": t["bidPrice"],
                    "B": "0",
                    "a": t["askPrice"],
                    "A": "0",
                    "o": t["openPrice"],
                    "h": t["highPrice"],
                    "l": t["lowPrice"],
                    "v": t["volume"],
                    "q": t["quoteVolume"],
                    "O": t["openTime"],
                    "C": t["closeTime"],
                    "F": -1,
                    "L": -1,
                    "n": t["count"],
                },
            )
            self.publish(
                f"{lower}@miniTicker",
                {
                    "e": "24hrMiniTicker",
                    "E": now,
                    "s": t["symbol"],
                    "c": t["lastPrice"],
                    "o": t["openPrice"],
                    "h": t["highPrice"],
                    "l": t["lowPrice"],
                    "v": t["volume"],
                    "q": t["quoteVolume"],
                },
            )

    async def _kline(self, market: str, interval: str) -> None:
        sym = binance_symbol(market)
        req = kpb.SubscribeKlinesRequest(market=market, interval=formats.KLINE_INTERVALS[interval])
        async for resp in self.market.subscribe_klines(req):
            row = formats.kline_row(resp.kline, interval)
            now = now_ms()
            self.publish(
                f"{sym.lower()}@kline_{interval}",
                {
                    "e": "kline",
                    "E": now,
                    "s": sym,
                    "k": {
                        "t": row[0],
                        "T": row[6],
                        "s": sym,
                        "i": interval,
                        "f": -1,
                        "L": -1,
                        "o": row[1],
                        "c": row[4],
                        "h": row[2],
                        "l": row[3],
                        "v": row[5],
                        "n": row[8],
                        "x": now > row[6],
                        "q": row[7],
                        "V": "0",
                        "Q": "0",
                        "B": "0",
                    },
                },
            )


def _error(code: int, msg: str, request_id: Any) -> dict[str, Any]:
    return {"error": {"code": code, "msg": msg}, "id": request_id}


async def serve(
    request: web.Request, feeds: Feeds, buffer: int, initial: list[str], combined: bool
) -> web.WebSocketResponse:
    # No permessage-deflate: a fanned-out message is serialized once, but would be compressed once per
    # connection (each has its own deflate context); at 1,000 connections that was most of the cost.
    ws = web.WebSocketResponse(heartbeat=HEARTBEAT_S, max_msg_size=64 * 1024, autoping=True, compress=False)
    conn = Connection(ws, combined=combined, buffer=buffer)
    try:  # the streams in the URL first: the connection is accepted once they are ready
        for name in initial:
            await feeds.subscribe(conn, name)
    except ValueError as exc:
        conn.closed = True
        feeds.leave(conn)
        raise ApiError(400, ILLEGAL_CHARS, str(exc), reason=str(Reason.INVALID_FIELD)) from None
    await ws.prepare(request)
    feeds.connections.add(conn)
    writer = asyncio.get_running_loop().create_task(conn.writer())
    try:
        async for msg in ws:
            if msg.type != WSMsgType.TEXT:
                continue
            await handle(conn, feeds, msg.data)
    finally:
        conn.closed = True
        feeds.connections.discard(conn)
        feeds.leave(conn)
        writer.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await writer
    return ws


async def handle(conn: Connection, feeds: Feeds, text: str) -> None:
    def answer(data: Any) -> None:
        feeds.flush()  # what was published before the answer goes out before it
        conn.send_json(data)

    try:
        msg = json.loads(text)
    except ValueError:
        answer(_error(2, "Invalid JSON", None))
        return
    if not isinstance(msg, dict):
        answer(_error(2, "Invalid request", None))
        return
    request_id = msg.get("id")
    method = msg.get("method")
    params = msg.get("params", [])
    if method == "LIST_SUBSCRIPTIONS":
        answer({"result": sorted(conn.streams), "id": request_id})
        return
    if method not in ("SUBSCRIBE", "UNSUBSCRIBE") or not isinstance(params, list):
        answer(_error(1, "Invalid request: method SUBSCRIBE, UNSUBSCRIBE or LIST_SUBSCRIPTIONS", request_id))
        return
    try:
        for name in params:
            if not isinstance(name, str):
                raise ValueError("stream names are strings")
            if method == "SUBSCRIBE":
                await feeds.subscribe(conn, name)
            else:
                feeds.unsubscribe(conn, name)
    except ValueError as exc:
        answer(_error(2, str(exc), request_id))
        return
    answer({"result": None, "id": request_id})


def routes(feeds: Feeds, buffer: int) -> list[web.RouteDef]:
    async def raw(request: web.Request) -> web.WebSocketResponse:
        tail = request.match_info.get("tail", "")
        names = [n for n in tail.split("/") if "@" in n]
        return await serve(request, feeds, buffer, names, combined=False)

    async def combined(request: web.Request) -> web.WebSocketResponse:
        names = [n for n in request.query.get("streams", "").split("/") if n]
        return await serve(request, feeds, buffer, names, combined=True)

    return [
        web.get("/ws", raw),
        web.get("/ws/{tail:.*}", raw),
        web.get("/stream", combined),
    ]

"""The WebSocket fan-out (services.gateway.ws) over real sockets, in-process and without the exchange:
what is published in one turn of the loop reaches each connection in order, framed once per kind (raw
or combined), only for the streams it has; a consumer that stops reading fills its socket, then its
backlog, and is dropped with a reason while another connection on the same stream gets everything."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, cast

import aiohttp
from aiohttp import web

from services.clients.market import MarketClient
from services.gateway.symbols import Symbols
from services.gateway.ws import FLUSH_COST_FACTOR, FLUSH_INTERVAL_S, MAX_FLUSH_INTERVAL_S, Connection, Feeds
from testkit.accounts_sim import default_catalog


@asynccontextmanager
async def server(feeds: Feeds, conns: list[Connection]) -> AsyncIterator[str]:
    """An aiohttp server whose /ws?s=a,b&c=1&b=N connections join the named streams of `feeds` (no
    upstream: the test publishes), combined if c=1, with a backlog of N messages."""

    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(compress=False)
        await ws.prepare(request)
        q = request.query
        conn = Connection(ws, combined=q.get("c") == "1", buffer=int(q.get("b", "1000")))
        for name in q.get("s", "").split(","):
            conn.streams.add(name)
            feeds.subscribers.setdefault(name, set()).add(conn)
        writer = asyncio.get_running_loop().create_task(conn.writer())
        conns.append(conn)
        try:
            async for _ in ws:
                pass
        finally:
            conn.closed = True
            for name in conn.streams:
                feeds.subscribers.get(name, set()).discard(conn)
            writer.cancel()
        return ws

    app = web.Application()
    app.router.add_get("/ws", handler)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def feeds() -> Feeds:
    # No market client: nothing here opens an upstream (the streams are joined directly).
    return Feeds(cast(MarketClient, None), Symbols(default_catalog()))


async def until(check: Any, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.01)


def test_one_turn_of_publishing_reaches_each_connection_in_order() -> None:
    async def run() -> tuple[list[Any], list[Any], list[Any]]:
        f, conns = feeds(), cast(list[Connection], [])
        async with server(f, conns) as addr, aiohttp.ClientSession() as session:
            raw = await session.ws_connect(f"ws://{addr}/ws?s=a@trade")
            combined = await session.ws_connect(f"ws://{addr}/ws?s=a@trade,b@trade&c=1")
            other = await session.ws_connect(f"ws://{addr}/ws?s=c@trade")
            await until(lambda: len(conns) == 3)
            f.publish("a@trade", {"i": 1})  # one turn: three messages, one flush
            f.publish("b@trade", {"i": 2})
            f.publish("a@trade", {"i": 3})
            f.publish("nobody@trade", {"i": 4})
            await asyncio.sleep(0.05)
            f.publish("c@trade", {"i": 5})  # a later turn
            got_raw = [json.loads((await raw.receive(timeout=5)).data) for _ in range(2)]
            got_combined = [json.loads((await combined.receive(timeout=5)).data) for _ in range(3)]
            got_other = [json.loads((await other.receive(timeout=5)).data)]
            for ws in (raw, combined):  # nothing more came
                try:
                    extra = await ws.receive(timeout=0.2)
                    raise AssertionError(f"unexpected {extra!r}")
                except TimeoutError:
                    pass
            return got_raw, got_combined, got_other

    got_raw, got_combined, got_other = asyncio.run(run())
    assert got_raw == [{"i": 1}, {"i": 3}]
    assert got_combined == [
        {"stream": "a@trade", "data": {"i": 1}},
        {"stream": "b@trade", "data": {"i": 2}},
        {"stream": "a@trade", "data": {"i": 3}},
    ]
    assert got_other == [{"i": 5}]


def test_a_consumer_that_stops_reading_is_dropped_and_the_others_get_everything() -> None:
    async def run() -> tuple[Connection, Connection, int, int, bytes]:
        f, conns = feeds(), cast(list[Connection], [])
        async with server(f, conns) as addr, aiohttp.ClientSession() as session:
            host, _, port = addr.rpartition(":")
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.connect((host, int(port)))
            sock.setblocking(False)
            reader, writer = await asyncio.open_connection(sock=sock)
            writer.write(
                f"GET /ws?s=x@trade&b=5 HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\n"
                "Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n".encode()
            )
            assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 101")
            await until(lambda: len(conns) == 1)
            stuck = conns[0]
            healthy_ws = await session.ws_connect(f"ws://{addr}/ws?s=x@trade", max_msg_size=0)
            await until(lambda: len(conns) == 2)
            healthy = conns[1]
            received = 0

            async def read_healthy() -> None:
                nonlocal received
                while True:
                    msg = await healthy_ws.receive()
                    if msg.type != aiohttp.WSMsgType.TEXT:
                        return
                    received += 1

            reading = asyncio.get_running_loop().create_task(read_healthy())
            published = 0
            payload = "y" * 64_000
            while not stuck.closed and published < 2_000:  # the stuck socket never reads
                f.publish("x@trade", {"n": published, "p": payload})
                published += 1
                await asyncio.sleep(0.002)  # a pace the healthy reader keeps up with
            f.publish("x@trade", {"n": published, "p": ""})
            published += 1
            await until(lambda: received == published, timeout=20)
            with_reason = b""
            try:  # what the stuck client finds once it reads: frames, then the close frame's reason
                while b"slow consumer" not in with_reason:
                    tail = await asyncio.wait_for(reader.read(1 << 24), 5)
                    if not tail:
                        break
                    with_reason = with_reason[-200:] + tail
            except TimeoutError:
                pass
            reading.cancel()
            writer.close()
            return stuck, healthy, published, received, with_reason

    stuck, healthy, published, received, with_reason = asyncio.run(run())
    assert stuck.closed and stuck.dropped_reason.startswith("slow consumer: more than 5 messages")
    assert not healthy.dropped_reason and received == published < 2_000
    assert b"slow consumer" in with_reason  # the close frame carries the reason


class _SlowConnection:
    """A connection whose writes take `cost_s` each (as a socket write to a busy kernel would)."""

    def __init__(self, cost_s: float) -> None:
        self.cost_s = cost_s
        self.combined = False
        self.frames: list[bytes] = []

    def send_frame(self, frame: bytes, messages: int = 1) -> None:
        deadline = time.perf_counter() + self.cost_s
        while time.perf_counter() < deadline:
            pass
        self.frames.append(frame)


def test_flushes_space_out_as_they_grow_costly_and_come_back() -> None:
    """The next flush waits FLUSH_COST_FACTOR x the last one's cost (between FLUSH_INTERVAL_S and
    MAX_FLUSH_INTERVAL_S): with many connections, fewer and larger writes, everything still sent."""

    async def run() -> None:
        f = feeds()
        slow = [_SlowConnection(0.0004) for _ in range(10)]  # ~4 ms a flush
        for c in slow:
            f.subscribers.setdefault("a@trade", set()).add(cast(Connection, c))
        assert f.flush_interval == FLUSH_INTERVAL_S
        f.publish("a@trade", {"i": 1})
        await until(lambda: all(c.frames for c in slow))
        assert FLUSH_COST_FACTOR * 0.004 <= f.flush_interval <= MAX_FLUSH_INTERVAL_S
        spaced, first_flush = f.flush_interval, f._last_flush
        for i in range(2, 6):  # published in four turns: one write per connection, after the wait
            f.publish("a@trade", {"i": i})
            await asyncio.sleep(0)
        await until(lambda: all(len(c.frames) == 2 for c in slow))
        assert f._last_flush - first_flush >= spaced * 0.99  # the second flush waited
        assert [json.loads(p) for p in _payloads(slow[0].frames[1])] == [{"i": i} for i in range(2, 6)]
        for c in slow:
            c.cost_s = 0.0
        f.publish("a@trade", {"i": 6})
        await until(lambda: all(len(c.frames) == 3 for c in slow))
        assert f.flush_interval == FLUSH_INTERVAL_S  # cheap again: back to the shortest wait

    asyncio.run(run())


def _payloads(data: bytes) -> list[bytes]:
    """The payloads of a run of short unmasked text frames."""
    out = []
    while data:
        n = data[1]
        out.append(data[2 : 2 + n])
        data = data[2 + n :]
    return out
